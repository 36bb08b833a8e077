"""The large-model fallback: any LangChain chat model, with PII kept on this machine when asked.

It fails gracefully. Every call runs on the fallback's own bounded thread pool (the bulkhead), so a slow
fallback never takes the threads the specialists need; each attempt is bounded by `timeout_s` and by the
caller's deadline; transient failures are retried a bounded number of times, with jittered exponential
backoff; and a circuit breaker stops calling a provider that keeps failing. When the fallback cannot answer
it says so with `FallbackUnavailable`, at once where it can, with a cause and, where known, when to retry.
"""

from slm_router.agents.fallback.agent import (
    CALL_OPTIONS,
    CallOptions,
    FallbackAgent,
    FallbackStatus,
    Sampling,
)
from slm_router.agents.fallback.chat_models import (
    ChatModelConfig,
    LlamaCppChatModel,
    build_chat_model,
    model_label,
    packaged_gguf_path,
)
from slm_router.agents.fallback.settings import FallbackSettings
from slm_router.agents.fallback.unavailable import FallbackUnavailable

__all__ = [
    "CALL_OPTIONS",
    "CallOptions",
    "ChatModelConfig",
    "FallbackAgent",
    "FallbackSettings",
    "FallbackStatus",
    "FallbackUnavailable",
    "LlamaCppChatModel",
    "Sampling",
    "build_chat_model",
    "model_label",
    "packaged_gguf_path",
]
