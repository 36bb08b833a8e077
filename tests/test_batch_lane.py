"""The batch lane (router/core/batch.py): `batch`/`abatch` give each request what `invoke` gives it.

Real models and agents; the fallback's chat model is scripted (it stands in for a paid LLM) so its answers
are the same on both paths.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from slm_router.agents.base import AgentInput, AgentResult, GenericOutput
from slm_router.agents.registry import register_agent, unregister_agent
from slm_router.policies import Policy
from slm_router.router.errors import EmptyInputError, InvalidEncodingError, InvalidInputError
from slm_router.router.result import RouteResult
from slm_router.router.runnable import Router
from tests.test_translate_then_route import TRANSLATIONS, ScriptedChatModel

MESSAGES: list[Any] = [
    "I love this product, it works great",
    "My order 12345 never arrived, write to ana@example.com",
    "Translate to Portuguese: where is the train station?",
    "What is the capital of Australia?",
    "",
    "Olá, onde está o meu pedido 12345?",  # translated first: the graph runs it
    "Ich bin sehr enttäuscht, das Paket kam beschädigt an und niemand antwortet auf meine Nachrichten.",
    "translate this to german and tell me the sentiment: I hate waiting",  # two intents: a flow
    "x" * 30_000,
    b"\xff\xfe not utf-8",
    {"text": "this is great", "route": "sentiment"},
    {"text": "route me", "route": "no-such-route"},
    "The parcel was damaged, I am furious about it",
    "Extract the entities: Maria Silva flew from Lisbon to Berlin on Monday",
    "ok",
]


@pytest.fixture(scope="module")
def scripted(default_policy: Policy, router: Router) -> Iterator[Router]:
    """The default policy on the session router's models, its fallback's chat model scripted."""
    scripted = Router(default_policy, pool=router.pool, embedder=router.embedder)
    assert scripted.fallback is not None
    scripted.fallback.chat_model = ScriptedChatModel(translations=TRANSLATIONS)
    yield scripted
    scripted.close()


def comparable(outcome: RouteResult | Exception) -> Any:
    """Everything a caller reads, less the timings."""
    if isinstance(outcome, Exception):
        return type(outcome).__name__
    fields = outcome.model_dump(exclude={"trace", "total_ms"})
    return fields, [(t.node, {k: v for k, v in t.info.items() if k != "ms"}) for t in outcome.trace]


def one_by_one(router: Router, messages: list[Any]) -> list[Any]:
    out = []
    for message in messages:
        try:
            out.append(comparable(router.invoke(message)))
        except Exception as exc:
            out.append(comparable(exc))
    return out


def test_batch_gives_each_request_what_invoke_gives_it(scripted: Router) -> None:
    expected = one_by_one(scripted, MESSAGES)
    got = [comparable(r) for r in scripted.batch(MESSAGES, return_exceptions=True)]
    assert len(got) == len(expected)
    for message, e, g in zip(MESSAGES, expected, got, strict=True):
        assert g == e, message
    kinds = {e if isinstance(e, str) else e[0]["action"] for e in expected}
    assert {"specialist", "fallback", "flow", "EmptyInputError", "InvalidEncodingError"} <= kinds


def test_abatch_gives_the_same(scripted: Router) -> None:
    expected = one_by_one(scripted, MESSAGES)
    got = asyncio.run(scripted.abatch(MESSAGES, return_exceptions=True))
    assert [comparable(r) for r in got] == expected


def test_batch_raises_the_first_failure_unless_asked_to_return_it(scripted: Router) -> None:
    with pytest.raises(EmptyInputError):
        scripted.batch(["I love it", "  ", b"\xff"])
    with pytest.raises(InvalidEncodingError):
        asyncio.run(scripted.abatch(["I love it", b"\xff", "  "]))
    outcomes = scripted.batch(["I love it", {"text": "hi", "route": 3}], return_exceptions=True)
    assert isinstance(outcomes[0], RouteResult) and isinstance(outcomes[1], InvalidInputError)
    assert scripted.batch([]) == []


def test_batch_shares_one_call_per_specialist(scripted: Router) -> None:
    """Eight sentiment messages: one agent call, so each trace shows the batch's share of it."""
    texts = [f"I really love this blender, number {n} is perfect" for n in range(8)]
    results = scripted.batch(texts)
    assert {r.answered_by for r in results} == {"sentiment"}
    assert all(
        [t.node for t in r.trace] == ["guard", "classify", "decide", "specialist", "check"] for r in results
    )


class PoisonedRefunds:
    """Answers every refund request, but crashes on any batch holding the word `poison`."""

    name = "refunds"
    calls: ClassVar[list[int]] = []

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        PoisonedRefunds.calls.append(len(items))
        if any("poison" in item.text for item in items):
            raise RuntimeError("poisoned input")
        return [
            AgentResult(
                agent=self.name,
                output="refund noted",
                details=GenericOutput(data={"order": re.findall(r"\d{4,}", item.text)}),
                confidence=0.9,
            )
            for item in items
        ]


@pytest.fixture
def poisoned() -> Iterator[None]:
    register_agent(
        "refunds",
        utterances=["I want a refund for my order", "Refund order 5531 please", "give me my money back"],
        threshold=0.3,
        min_confidence=0.5,
    )(PoisonedRefunds)
    yield
    unregister_agent("refunds")


def test_a_crashing_request_fails_alone_in_the_batch(
    default_policy: Policy, router: Router, poisoned: None
) -> None:
    custom = Router(default_policy, embedder=router.embedder, agents=["refunds"])
    assert custom.fallback is not None
    custom.fallback.chat_model = ScriptedChatModel()
    try:
        texts = [{"text": f"refund order {n} please", "route": "refunds"} for n in (5001, 5002, 5003)]
        texts.insert(1, {"text": "refund order 5004, poison", "route": "refunds"})
        PoisonedRefunds.calls.clear()
        results = custom.batch(texts)
        assert [r.answered_by for r in results] == ["refunds", "fallback", "refunds", "refunds"]
        assert results[1].reason_code == "specialist_failed"
        assert PoisonedRefunds.calls[0] == 4  # one call for the batch, then each alone
    finally:
        custom.close()
