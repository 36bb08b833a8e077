"""The HTTP service: the FastAPI app and its models, the error shape, API keys, authentication and body
limits, load shedding, Prometheus metrics."""

from slm_router.extras import require_extra

require_extra("serve", "the HTTP service (`slm-router serve`)")
