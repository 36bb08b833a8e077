"""Operator tools: evaluate, tune, learn, train, report, and the decision log they read."""
