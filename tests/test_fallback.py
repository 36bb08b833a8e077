"""The fallback through a real llama.cpp OpenAI-compatible server on 127.0.0.1, PII kept local."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage

from slm_router.policies import Policy
from slm_router.router.runnable import Router
from tests.conftest import policy_with


class _Capture(BaseCallbackHandler):
    """Records what the chat model is actually sent (the real LangChain callback interface)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.sent += [str(m.content) for batch in messages for m in batch]


def _server_router(policy: Policy, router: Router, base_url: str, **updates: Any) -> Router:
    configured = policy_with(
        policy,
        fallback={
            "kind": "openai",
            "base_url": base_url,
            "model": "smollm2",
            "max_tokens": 48,
            "timeout_s": 60,
        },
        **updates,
    )
    return Router(configured, embedder=router.embedder)


def test_openai_compatible_server_answers_general_question(
    default_policy: Policy, router: Router, llama_server: str
) -> None:
    served = _server_router(default_policy, router, llama_server)
    result = served.invoke("What is the best way to grow tomatoes on a balcony?")
    assert result.escalated and result.answered_by == "fallback"
    assert result.details is not None and result.details.kind == "fallback"
    assert result.details.model == "openai:smollm2"
    assert len(result.output.strip()) > 0


def test_pii_never_reaches_the_fallback_and_is_restored(
    default_policy: Policy, router: Router, llama_server: str
) -> None:
    served = _server_router(default_policy, router, llama_server)
    assert served.fallback is not None
    capture = _Capture()
    served.fallback.chat_model.callbacks = [capture]
    text = "Hi, I'm Maria Garcia. Reply to maria.garcia@example.com or call +1 415 555 0100 about my account."
    result = served.invoke({"text": text, "route": "other"})
    user_turn = capture.sent[-1]
    for secret in ("maria.garcia@example.com", "+1 415 555 0100", "Maria Garcia"):
        assert secret not in user_turn
    assert "[EMAIL_1]" in user_turn and "[PHONE_1]" in user_turn and "[PERSON_1]" in user_turn
    assert result.details is not None and result.details.kind == "fallback"
    assert result.details.redacted and result.details.redactions == 3
    assert "[EMAIL_1]" not in result.output and "[PERSON_1]" not in result.output


def test_redaction_off_sends_text_as_is(default_policy: Policy, router: Router, llama_server: str) -> None:
    served = _server_router(default_policy, router, llama_server, **{"privacy.redact_pii": False})
    assert served.fallback is not None
    capture = _Capture()
    served.fallback.chat_model.callbacks = [capture]
    served.invoke({"text": "Email maria.garcia@example.com about the delay", "route": "other"})
    assert "maria.garcia@example.com" in capture.sent[-1]
