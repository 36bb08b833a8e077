"""Optional parts of slm-router and the extra that installs each.

`pip install slm-router` gives the library router (Python API, `route`/`explain`, the specialists in-process,
an OpenAI-compatible fallback). The HTTP service, Ray, llama.cpp, the evaluation reports and OpenTelemetry are
extras: where one is needed and missing, the error names the extra and the pip command, instead of a bare
`No module named ...` from deep inside a call. Standard library only, so that agents (which must not import
`slm_router.router`) and the front door can use it for free.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# The modules each extra installs (top-level import names; tests/test_packaging.py checks them against
# pyproject.toml's optional-dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "starlette", "uvicorn", "prometheus_client", "sse_starlette"),
    "ray": ("ray",),
    "llamacpp": ("llama_cpp",),
    "eval": ("matplotlib", "sacrebleu"),
    "otel": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
}


class MissingExtraError(ImportError):
    """A feature was used whose optional dependencies are not installed; `extra` names what to install.

    An ImportError (what it is), so code that already treats a missing library as optional keeps working.
    """

    def __init__(self, extra: str, feature: str, missing: str | None = None) -> None:
        message = f"{feature} needs the [{extra}] extra: pip install 'slm-router[{extra}]'"
        if missing:
            message += f" (not installed: {missing})"
        super().__init__(message, name=missing)
        self.extra = extra
        self.feature = feature


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`module`, imported; or MissingExtraError naming `extra` when it (or one of its own dependencies) is
    not installed. Call it right before the import it guards, so the import stays as lazy as it was."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(extra, feature, exc.name or module) from exc


def require_extra(extra: str, feature: str) -> None:
    """Fail before any slow work (loading models) when a module of `extra` is missing; imports nothing."""
    missing = [module for module in EXTRAS[extra] if not _installed(module)]
    if missing:
        raise MissingExtraError(extra, feature, ", ".join(missing))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # a parent package missing; a module without a spec
        return False
