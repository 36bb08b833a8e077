"""The request path: one request in, a typed result out (state, nodes, rules, route index, embedder)."""
