"""The one error shape of the HTTP service, and the status and `type` each failure answers with.

Every 4xx/5xx body is `{"error": {"type", "message", ...}}`; a bug answers 500 with an incident id, and its
traceback goes to the server log only.
"""

import json
import logging
import math
import uuid
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from slm_router.router.errors import (
    FallbackError,
    InputTooLargeError,
    InvalidInputError,
    ModelLoadError,
    OverloadedError,
    RequestTimeoutError,
    UnknownRouteError,
)

log = logging.getLogger("slm_router.server")


class ErrorBody(BaseModel):
    """Our error shape, and OpenAI's too (`message`, `type`, `code`, `param`), so OpenAI clients read it."""

    type: str
    message: str
    code: str | None = Field(default=None, description="OpenAI-compatible: the same value as `type`.")
    param: str | None = Field(
        default=None, description="OpenAI-compatible: the request field at fault, when one is."
    )
    details: list[dict[str, Any]] | None = None
    status: int | None = Field(default=None, description="In a batch item: the status it would have alone.")

    @classmethod
    def of(cls, kind: str, message: str, details: list[dict[str, Any]] | None = None) -> "ErrorBody":
        field = str(details[0].get("field", "")) if details else ""
        param = field.removeprefix("body.").removeprefix("body") or None
        return cls(type=kind, code=kind, message=message, param=param, details=details)


class ErrorResponse(BaseModel):
    """The one error shape of every 4xx/5xx answer."""

    error: ErrorBody


_STATUS: list[tuple[type[Exception], int, str]] = [
    (InputTooLargeError, 413, "input_too_large"),
    (InvalidInputError, 422, "invalid_input"),
    (UnknownRouteError, 400, "unknown_route"),
    (FallbackError, 503, "fallback_unavailable"),
    (ModelLoadError, 503, "model_unavailable"),
    (RequestTimeoutError, 504, "request_timeout"),
]


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint can answer, all with `ErrorResponse`."""
    meaning = {
        400: "Unknown route or undecodable body",
        401: "Missing or invalid API key",
        404: "Unknown model",
        413: "Body, batch or text too large",
        422: "Invalid request (field, encoding, nesting)",
        429: "Admission queue full: retry after `Retry-After` seconds",
        503: "Overloaded, fallback unavailable (circuit open) or model missing; see `Retry-After`",
        504: "The request ran past limits.request_timeout_s",
    }
    return {status: {"model": ErrorResponse, "description": meaning[status]} for status in statuses}


ROUTING_ERRORS = documented(400, 401, 413, 422, 429, 503, 504)


def error_bytes(kind: str, message: str) -> bytes:
    """The error body for the raw ASGI gate, which answers before FastAPI runs."""
    return json.dumps({"error": ErrorBody.of(kind, message).model_dump(exclude_none=True)}).encode()


def error_response(
    status: int,
    kind: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    retry_after_s: float | None = None,
) -> JSONResponse:
    body = ErrorBody.of(kind, message, details).model_dump(exclude_none=True)
    response = JSONResponse({"error": body}, status_code=status)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


def classify_error(exc: BaseException) -> tuple[int, str, str]:
    """Status, `type` and message of a failure; anything untyped is a bug, logged under an incident id the
    client can quote."""
    if isinstance(exc, OverloadedError):
        return exc.status, exc.reason, str(exc)
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind, str(exc)
    incident = uuid.uuid4().hex[:12]
    log.error("unhandled error (incident %s)", incident, exc_info=exc)
    return 500, "internal_error", f"internal error (incident {incident}); see the server log"


def retry_after(exc: BaseException) -> float | None:
    """The wait an overload or an open circuit asks for, if the failure carries one."""
    value = getattr(exc, "retry_after_s", None)
    return float(value) if isinstance(value, int | float) else None


def validation_details(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    """Every problem as `details`, and the first one as the message a client reads."""
    details = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        details.append({"field": where, "problem": str(err.get("msg")), "type": err.get("type")})
    first = details[0] if details else {"field": "body", "problem": "invalid request"}
    if first.get("type") == "json_invalid":
        return f"malformed JSON: {first['problem']}", details
    return f"{first['field']}: {first['problem']}", details
