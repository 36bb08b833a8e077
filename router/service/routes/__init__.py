"""The endpoints, one module per concern, each an `APIRouter` named `endpoints` that `create_app` mounts."""
