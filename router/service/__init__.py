"""The HTTP service: FastAPI app, authentication and body limits, load shedding, Prometheus metrics."""
