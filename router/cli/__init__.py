"""The `slm-router` command line."""

from slm_router.router.cli.app import app, main

__all__ = ["app", "main"]
