"""`Router`: the whole pipeline behind one LangChain Runnable (invoke / ainvoke / batch / abatch)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import numpy as np
from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slm_router.agents.base import AgentError, AgentInput, AgentTimeout
from slm_router.agents.fallback.agent import CALL_OPTIONS, CallOptions
from slm_router.agents.hosting.local import AgentPool
from slm_router.agents.langid import detect_language
from slm_router.policies import Policy, load_policy
from slm_router.router.compose import Backend, compose
from slm_router.router.core import telemetry
from slm_router.router.core.batch import arun_batch, run_batch
from slm_router.router.core.conversations import DEFAULT_TENANT, ConversationStore, Turn
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.graph import build_graph
from slm_router.router.core.index import CalibrationReport, Neighbour, RouteScores
from slm_router.router.core.nodes import normalise
from slm_router.router.core.nodes.translate import (
    LocalTranslation,
    needs_translation,
    translate_locally,
    untranslatable,
)
from slm_router.router.core.rules import Decision, decide
from slm_router.router.core.state import GraphInput, GraphOutput, fresh_state
from slm_router.router.errors import InvalidEncodingError, InvalidInputError
from slm_router.router.result import RouteRequest, RouteResult, Translation, validation_problems

log = logging.getLogger("slm_router")

RouterInput = str | bytes | RouteRequest | dict[str, Any]

NO_FALLBACK = "explain does not ask the fallback"
"""Why `decide_many` routes untranslated a message that the graph could send to the fallback to translate:
explaining and benchmarking spend no fallback budget and give the same answer each time."""


class RouteEvent(BaseModel):
    """Progress of one request, node by node: `node` (a step finished), `escalation` (the fallback is about
    to be asked, and why), and finally `result`."""

    event: Literal["node", "escalation", "result"]
    node: str | None = None
    ms: float | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    result: RouteResult | None = None


class Started(NamedTuple):
    """A batch item ready for the graph: its request, tenant, config and the graph's input."""

    request: RouteRequest
    tenant: str
    config: RunnableConfig
    start: GraphInput


class Routing(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    language: str
    language_confidence: float
    scores: RouteScores
    decision: Decision
    translation: Translation | None = None
    vector: np.ndarray = Field(exclude=True)


class Explanation(BaseModel):
    text: str
    language: str
    scores: RouteScores
    nearest: list[Neighbour]
    decision: str
    route: str
    reason: str
    calibration: CalibrationReport
    translation: Translation | None = None


def _events(node: str, change: dict[str, Any]) -> list[RouteEvent]:
    if node == "respond":
        return [RouteEvent(event="result", node=node, result=change["result"])]
    events = [
        RouteEvent(
            event="node",
            node=f"flow:{s.agent}",
            ms=s.ms,
            info={"stage": s.stage, "escalated": s.escalated, "reason": s.summary().reason},
        )
        for s in change.get("flow_steps", [])
    ]
    if node != "flow_join":  # its trace repeats the flow steps already reported
        events += [
            RouteEvent(event="node", node=t.node, ms=t.ms, info=t.info) for t in change.get("trace", [])
        ]
    escalation = change.get("escalation")
    if escalation is not None:
        events.append(RouteEvent(event="escalation", node=node, info=escalation.model_dump()))
    return events


RUN_NAME = "slm-router"


def named(config: RunnableConfig | None) -> RunnableConfig:
    """The caller's config, its run named `slm-router` (not "LangGraph") in traces unless it names it."""
    given: dict[str, Any] = dict(config or {})
    return cast(RunnableConfig, {**given, "run_name": given.get("run_name") or RUN_NAME})


def tenant_of(config: RunnableConfig | None) -> str:
    """The tenant a call acts for: conversation memory is never shared across tenants."""
    tenant = ((config or {}).get("configurable") or {}).get("tenant")
    return str(tenant) if tenant else DEFAULT_TENANT


def coerce_request(value: RouterInput) -> RouteRequest:
    if isinstance(value, RouteRequest):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEncodingError(f"text is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        if isinstance(value, str):
            return RouteRequest(text=value)
        if isinstance(value, dict):
            return RouteRequest.model_validate(value)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid request: {'; '.join(validation_problems(exc))}") from None
    raise InvalidInputError(f"expected text, bytes, dict or RouteRequest, got {type(value).__name__}")


class Router(Runnable[RouterInput, RouteResult]):
    """Routes text to the cheapest capable model. Build once (models load lazily), call from many threads."""

    name = RUN_NAME

    def __init__(
        self,
        policy: Policy,
        pool: AgentPool | None = None,
        embedder: Embedder | None = None,
        backend: Backend | None = None,
        agents: Sequence[str] = (),
        conversations: ConversationStore | None = None,
    ) -> None:
        """Run with the parts `router/compose.py` builds from `policy`; a `pool`, `embedder` or
        `conversations` store passed in is shared (never closed here). `agents`: registered agents to
        route to that the policy does not name."""
        self.parts = compose(policy, pool, embedder, backend, agents, conversations)
        components = self.parts.components
        self.policy = components.policy
        self.embedder = components.embedder
        self.index = components.index
        self.pool = components.pool
        self.fallback = components.fallback
        self.conversations = self.parts.conversations
        self.decision_log = self.parts.decision_log
        self.shadow = self.parts.shadow
        self.graph = build_graph(components)

    @classmethod
    def from_policy(cls, policy: str | Path | Policy | None = None, **kwargs: Any) -> Router:
        """Build from a policy file, a `Policy`, or None for the packaged default preset; `kwargs` as for
        `Router(...)`, e.g. `agents=["refunds"]` for a registered agent's route."""
        return cls(policy if isinstance(policy, Policy) else load_policy(policy), **kwargs)

    def warmup(self) -> None:
        """Load every model now (first requests would otherwise pay for it)."""
        self.embedder.load()
        detect_language("warm up the language detector")
        for name in self.pool.names():
            self._warm(name)
        if self.fallback is not None:
            try:
                self.fallback.answer("Say OK.")
            except AgentError as exc:  # the service starts anyway: /readyz and the breaker report it
                log.warning("fallback not answering at start-up: %s", exc)

    def _warm(self, name: str) -> None:
        """One agent's first call, retried while it times out: the model load it started goes on (see
        `AgentTimeout`), so a later try finds it loaded, up to `limits.warmup_timeout_s`."""
        # Portuguese, so the translator loads its models too (English alone would need no model).
        probe = [AgentInput(text="Olá, onde está o meu pedido 12345?", language="pt")]
        deadline = time.monotonic() + self.policy.limits.warmup_timeout_s
        while True:
            try:
                self.pool.run(name, probe, timeout_s=max(deadline - time.monotonic(), 0.0))
                return
            except AgentTimeout as exc:
                if time.monotonic() >= deadline:
                    raise AgentTimeout(
                        name,
                        f"not warm after limits.warmup_timeout_s={self.policy.limits.warmup_timeout_s:g} s",
                    ) from exc
                log.info("agent %s is still loading (%s); trying again", name, exc)

    def budget_retry_after_s(self) -> float | None:
        """When the escalation budget may have room again (a 429's `Retry-After`); None without a budget,
        or when it has room now."""
        budget = self.parts.components.budget
        return None if budget is None else budget.retry_after_s()

    def fallback_status(self) -> dict[str, Any] | None:
        """The fallback's circuit breaker and bulkhead, for /readyz and /metrics; None without a fallback."""
        return None if self.fallback is None else self.fallback.status().model_dump()

    def close(self) -> None:
        """Stop the agent pool it built (and the Ray deployments it started)."""
        if self.shadow is not None:
            self.shadow.close()
        if self.parts.owns_pool:
            self.pool.close()
        if self.parts.owns_embedder:
            self.embedder.close()
        if self.decision_log is not None:
            self.decision_log.close()
        if self.parts.owns_conversations:
            self.conversations.close()
        if self.fallback is not None:
            self.fallback.close()

    @property
    def routes(self) -> list[str]:
        return list(self.policy.routes)

    def _start(self, request: RouteRequest, tenant: str, history: list[Turn] | None = None) -> GraphInput:
        """The graph's input: the request, its deadline, and the conversation's turns so far (`history`
        when the caller keeps the conversation, else the stored turns)."""
        if history is None:
            history = (
                []
                if request.conversation_id is None
                else self.conversations.load(tenant, request.conversation_id)
            )
        return fresh_state(request, time.monotonic() + self.policy.limits.request_timeout_s, history)

    def _finish(self, request: RouteRequest, tenant: str, state: GraphOutput) -> RouteResult:
        """Keep the conversation's turns (when it has an id) and record the decision."""
        if request.conversation_id is not None:
            self.conversations.save(tenant, request.conversation_id, state["history"])
        return self._record(request, state["result"], tenant)

    def forget(self, conversation_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Delete one conversation (e.g. on a user's request): its memory and its decision-log rows (with
        their labels), for this tenant only; False when nothing was kept."""
        forgotten = self.conversations.delete(tenant, conversation_id)
        if self.decision_log is not None:
            forgotten = self.decision_log.delete_conversation(conversation_id, tenant) > 0 or forgotten
        return forgotten

    def _record(
        self, request: RouteRequest, result: RouteResult, tenant: str = DEFAULT_TENANT
    ) -> RouteResult:
        """Append the decision to the log (a fraction of a millisecond; never raises); maybe shadow it."""
        decision_id = None
        if self.decision_log is not None:
            decision_id = self.decision_log.record(
                result, request.text, self.policy.privacy.log_text, request.conversation_id, tenant
            )
        if self.shadow is not None:
            self.shadow.offer(result, request.text, decision_id)
        return result

    def invoke(self, input: RouterInput, config: RunnableConfig | None = None, **kwargs: Any) -> RouteResult:
        """Route one request. `config["configurable"]["tenant"]` scopes conversation memory (the HTTP
        service sets it from the API key); without it every caller shares the "default" tenant.

        The call is its own run (named `slm-router`, ending with the `RouteResult`), and the controller
        graph's nodes are its children, so callbacks, tags and `astream_events` see the whole request."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(
        self, input: RouterInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> RouteResult:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def _invoke(
        self, input: RouterInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> RouteResult:
        request = coerce_request(input)
        tenant = tenant_of(config)
        with telemetry.request_span():
            state = cast(GraphOutput, self.graph.invoke(self._start(request, tenant), config=config))
        return self._finish(request, tenant, state)

    async def _ainvoke(
        self, input: RouterInput, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> RouteResult:
        request = coerce_request(input)
        tenant = tenant_of(config)
        with telemetry.request_span():
            state = cast(GraphOutput, await self.graph.ainvoke(self._start(request, tenant), config=config))
        return self._finish(request, tenant, state)

    def batch(
        self,
        inputs: list[RouterInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[RouteResult]:
        """Route many requests as one batch (router/core/batch.py): one forward pass for all, each
        specialist called once per batch, the fallback last; each gets what `invoke` would give it.
        `return_exceptions=True` puts a failed request's exception in its place instead of raising the
        first. A config with callbacks runs each request through the graph, so each run is traced."""
        configs = get_config_list(config, len(inputs))
        if not inputs or any(cfg.get("callbacks") for cfg in configs):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        started = self._start_many(inputs, configs)
        ready = [s for s in started if not isinstance(s, Exception)]
        outputs = iter(
            run_batch(self.graph, self.parts.components, [s.start for s in ready], [s.config for s in ready])
        )
        return self._finish_many(started, outputs, return_exceptions)

    async def abatch(
        self,
        inputs: list[RouterInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[RouteResult]:
        """`batch` on the event loop (the HTTP service's /v1/route/batch uses it)."""
        configs = get_config_list(config, len(inputs))
        if not inputs or any(cfg.get("callbacks") for cfg in configs):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        started = self._start_many(inputs, configs)
        ready = [s for s in started if not isinstance(s, Exception)]
        outputs = await arun_batch(
            self.graph, self.parts.components, [s.start for s in ready], [s.config for s in ready]
        )
        return self._finish_many(started, iter(outputs), return_exceptions)

    def _start_many(
        self, inputs: list[RouterInput], configs: list[RunnableConfig]
    ) -> list[Started | Exception]:
        started: list[Started | Exception] = []
        for value, cfg in zip(inputs, configs, strict=True):
            try:
                request, tenant = coerce_request(value), tenant_of(cfg)
                started.append(Started(request, tenant, named(cfg), self._start(request, tenant)))
            except Exception as exc:  # a bad input fails alone, as `invoke` would raise it
                started.append(exc)
        return started

    def _finish_many(
        self,
        started: list[Started | Exception],
        outputs: Iterator[GraphOutput | Exception],
        return_exceptions: bool,
    ) -> list[Any]:
        """Results in input order (each conversation kept, each decision logged); the first exception is
        raised unless `return_exceptions`."""
        results: list[RouteResult | Exception] = []
        for s in started:
            out = s if isinstance(s, Exception) else next(outputs)
            if isinstance(s, Exception) or isinstance(out, Exception):
                results.append(cast(Exception, out))
            else:
                try:
                    results.append(self._finish(s.request, s.tenant, out))
                except Exception as exc:
                    results.append(exc)
        if not return_exceptions:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results

    def decide_many(self, texts: list[str], translate: bool = True) -> list[Routing]:
        """Guard, translate, classify and decide for many texts in one embedding batch; no specialist or
        fallback is called. This is the router alone, for evaluation and `explain`: the decision the graph
        makes, the same messages translated (`translate`; False routes every text as sent).

        Only the local agent translates here (`NO_FALLBACK`): a message it cannot translate keeps the
        language decision, and the reason says why.
        """
        clean = [normalise(t, self.policy.limits.max_chars) for t in texts]
        languages = [detect_language(t) for t in clean]
        local = self._translate_locally(clean, languages) if translate else {}
        translations = [local[i].translation if i in local else None for i in range(len(clean))]
        routed = [t if tr is None else tr.text for t, tr in zip(clean, translations, strict=True)]
        vectors = self.embedder.encode(routed)
        return [
            Routing(
                text=t,
                language=lang,
                language_confidence=conf,
                scores=scores,
                vector=vec,
                decision=self._decide(scores, lang, conf, local.get(i)),
                translation=translation,
            )
            for i, (t, (lang, conf), scores, vec, translation) in enumerate(
                zip(clean, languages, self.index.score_many(vectors), vectors, translations, strict=True)
            )
        ]

    def _translate_locally(
        self, texts: list[str], languages: list[tuple[str, float]]
    ) -> dict[int, LocalTranslation]:
        """The local agent's translation (or why there is none) of each text the graph would translate,
        by position; one pool call per micro-batch, each with a request's deadline, as the node has."""
        wanted = [
            i
            for i, (text, (lang, conf)) in enumerate(zip(texts, languages, strict=True))
            if needs_translation(self.policy, lang, conf) and untranslatable(text) is None
        ]
        target = self.policy.languages.native[0] if wanted else ""
        size = self.policy.hosting.max_batch_size
        found: dict[int, LocalTranslation] = {}
        for start in range(0, len(wanted), size):
            chunk = wanted[start : start + size]
            deadline = time.monotonic() + self.policy.limits.request_timeout_s
            messages = [(texts[i], languages[i][0]) for i in chunk]
            found.update(zip(chunk, translate_locally(self.pool, messages, target, deadline), strict=True))
        return found

    def _decide(
        self, scores: RouteScores, language: str, confidence: float, local: LocalTranslation | None
    ) -> Decision:
        """`decide` on the translation's scores; a message the local agent could not translate keeps the
        language decision, which then says why it was not translated."""
        translated = local is not None and local.translation is not None
        decision = decide(scores, self.policy, language, confidence, translated=translated)
        if local is None or translated or decision.code != "language":
            return decision
        why = f"{decision.reason}: no local translation ({local.note}), and {NO_FALLBACK}"
        return decision.model_copy(update={"reason": why})

    async def astream_progress(
        self, input: RouterInput, config: RunnableConfig | None = None
    ) -> AsyncIterator[RouteEvent]:
        """Yield `RouteEvent`s as the graph runs (`astream_events` also works, with LangChain's events)."""
        request = coerce_request(input)
        tenant = tenant_of(config)
        initial = self._start(request, tenant)
        async for update in self.graph.astream(initial, config=named(config), stream_mode="updates"):
            for node, change in update.items():
                if node == "respond" and request.conversation_id is not None:
                    self.conversations.save(tenant, request.conversation_id, change["history"])
                for event in _events(node, change or {}):
                    if event.result is not None:
                        self._record(request, event.result, tenant)
                    yield event

    def explain(self, text: str, neighbours: int = 5) -> Explanation:
        """Scores per route, nearest examples and the decision, without calling any agent but the local
        translator: a non-native message is scored, and its neighbours found, by its translation."""
        routing = self.decide_many([text])[0]
        nearest = self.index.nearest(routing.vector, neighbours)
        scores = routing.scores
        if not scores.similarities:  # the linear head does not need them; explain shows them anyway
            scores = scores.model_copy(
                update={
                    "similarities": self.index.route_similarities(routing.vector),
                    "max_similarity": nearest[0].similarity if nearest else None,
                }
            )
        return Explanation(
            text=routing.text,
            language=routing.language,
            scores=scores,
            nearest=nearest,
            decision=routing.decision.action,
            route=routing.decision.route,
            reason=routing.decision.reason,
            calibration=self.index.calibration,
            translation=routing.translation,
        )

    async def astream_chat(
        self,
        request: RouteRequest,
        history: list[Turn],
        config: RunnableConfig | None = None,
        options: CallOptions | None = None,
        stream: bool = False,
    ) -> AsyncIterator[str | RouteResult]:
        """One turn of a conversation the caller keeps whole (the OpenAI endpoint): `history` stands in for
        stored turns (follow-up routing and the fallback's context see it) and nothing is stored.
        `options`: the fallback's sampling settings and the caller's instructions. Yields, with `stream`,
        the fallback's answer text as it is generated (PII restored), then always the `RouteResult`."""
        texts: asyncio.Queue[str | None] = asyncio.Queue()
        options = replace(options or CallOptions(), on_text=texts.put_nowait if stream else None)
        given: dict[str, Any] = dict(config or {})
        configurable = {**(given.get("configurable") or {}), CALL_OPTIONS: options}
        run_config = named(cast(RunnableConfig, {**given, "configurable": configurable}))
        tenant = tenant_of(config)
        start = self._start(request, tenant, history)

        async def run() -> GraphOutput:
            try:
                return cast(GraphOutput, await self.graph.ainvoke(start, config=run_config))
            finally:
                texts.put_nowait(None)  # after every piece of text: they were queued first

        task = asyncio.ensure_future(run())
        try:
            while (text := await texts.get()) is not None:
                yield text
            state = await task
        finally:
            task.cancel()  # the consumer stopped early: stop the run too
        yield self._record(request, state["result"], tenant)
