"""The HTTP service: the FastAPI app and its models, the error shape, API keys, authentication and body
limits, load shedding, Prometheus metrics."""
