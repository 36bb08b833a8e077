"""Building a router from a policy: every part is made here, once, so the `Router` Runnable only runs.

`compose` completes the policy's agent routes from the registry, then builds the embedder, route index,
agents and their pool (local or Ray), the fallback (with a PII redactor only when the policy redacts), the
escalation budget, conversation store, decision log and shadow sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Literal

import numpy as np

from slm_router.agents.base import Agent, AgentError
from slm_router.agents.extraction import ExtractionAgent
from slm_router.agents.fallback import FallbackAgent, FallbackSettings, build_chat_model, model_label
from slm_router.agents.hosting.local import AgentPool, LocalPool
from slm_router.agents.redaction import Redactor
from slm_router.agents.registry import BUILTIN_AGENTS, Registration, SharedParts, registered_agents
from slm_router.policies import Policy, PolicyError, RoutePolicy
from slm_router.router.core.budget import EscalationBudget
from slm_router.router.core.components import Components
from slm_router.router.core.conversations import ConversationStore, open_store
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.index import RouteIndex
from slm_router.router.errors import ModelLoadError
from slm_router.router.ops.decision_log import DecisionLog, open_log
from slm_router.router.ops.shadow import Shadow, ShadowRecord

Backend = Literal["local", "ray"]
REGISTRATION_DEFAULTS = ("threshold", "min_confidence", "fallback_prompt")


@dataclass
class Parts:
    """Everything a `Router` runs with. A pool or embedder passed in (`owns_*` False) may serve other
    routers too, so closing the router leaves it running."""

    components: Components
    conversations: ConversationStore
    decision_log: DecisionLog | None
    shadow: Shadow | None
    owns_pool: bool
    owns_embedder: bool
    owns_conversations: bool


def compose(
    policy: Policy,
    pool: AgentPool | None = None,
    embedder: Embedder | None = None,
    backend: Backend | None = None,
    agents: Sequence[str] = (),
    conversations: ConversationStore | None = None,
) -> Parts:
    """All parts for `policy`; `agents` are registered agents to route to besides those the policy names.
    `conversations`: a running router's memory to keep (a policy reload must not forget conversations)."""
    policy = with_agent_routes(policy, agents)
    shared_embedder = embedder or Embedder(
        _embedder_model(policy),
        micro_batch=(policy.hosting.max_batch_size, policy.hosting.batch_wait_timeout_s),
        encoder=policy.router.runs_on(),
        encoder_path=policy.resolve(policy.router.encoder_path) if policy.router.encoder_path else None,
    )
    index = RouteIndex.from_policy(policy, shared_embedder)
    try:
        hosting = pool or build_pool(policy, shared_embedder, backend)
        fallback = build_fallback(policy)
    except AgentError as exc:  # e.g. a seq2seq directory in the policy that does not exist
        raise ModelLoadError(str(exc)) from exc
    budget_conf = policy.escalation.budget
    budget = EscalationBudget(budget_conf) if budget_conf.active() and fallback else None
    decision_log = open_log(policy)
    return Parts(
        components=Components(policy, shared_embedder, index, hosting, fallback, budget),
        conversations=conversations or open_store(policy),
        decision_log=decision_log,
        shadow=build_shadow(policy, fallback, budget, decision_log),
        owns_pool=pool is None,
        owns_embedder=embedder is None,
        owns_conversations=conversations is None,
    )


def with_agent_routes(policy: Policy, agents: Sequence[str] = ()) -> Policy:
    """The policy with its agent routes completed from the registry; a PolicyError names every problem.

    Each of `agents` that no route serves gets a route of its name. A route naming a registered agent and
    holding no examples takes the registration's utterances, and its threshold, min_confidence and
    fallback_prompt where the route sets none. An agent the policy does not name gets no route.
    """
    registry = registered_agents()
    asked = [agents] if isinstance(agents, str) else list(agents)
    known = f"registered agents: {sorted(registry)} (add one with @register_agent)"
    references = [*policy.agent_references().items(), *(("agents", name) for name in asked)]
    problems = [
        f"{where}: unknown agent {name!r}; {known}" for where, name in references if name not in registry
    ]
    routes = dict(policy.routes)
    served = {route.agent for route in routes.values()}
    for name in asked:
        if name in served or name not in registry:
            continue
        if name in routes:
            problems.append(
                f"agents: route {name!r} exists but does not serve agent {name!r}; set `agent: {name}` on it"
            )
        else:
            routes[name] = RoutePolicy(agent=name)
    for name, route in routes.items():
        registration = registry.get(route.agent) if route.agent else None
        if route.examples or route.utterances or registration is None:
            continue  # a route without agent or examples fails validation; an unknown agent is reported
        if not registration.utterances:
            problems.append(
                f"routes.{name}: a route needs example utterances: set `examples` (a file) or `utterances` "
                f"(a list); agent {route.agent!r} is registered without any to lend it"
            )
        else:
            routes[name] = _from_registration(route, registration)
    if problems:
        raise PolicyError("policy", problems)
    if routes == policy.routes:
        return policy
    completed = policy.model_copy(update={"routes": routes})
    completed.base_dir = policy.base_dir
    return completed


def _from_registration(route: RoutePolicy, registration: Registration) -> RoutePolicy:
    unset = [field for field in REGISTRATION_DEFAULTS if getattr(route, field) is None]
    defaults = {field: getattr(registration, field) for field in unset}
    return route.model_copy(update={"utterances": list(registration.utterances), **defaults})


def hosted_agents(policy: Policy) -> list[str]:
    """The built-ins plus the other registered agents the policy uses."""
    used = set(policy.agent_references().values())
    return list(BUILTIN_AGENTS) + sorted(used - set(BUILTIN_AGENTS))


def build_agent(policy: Policy, name: str, embedder: Embedder | None = None) -> Agent:
    """One registered agent, from its section of the policy and the shared parts (`embedder` encodes for
    agents on embeddings; without it each process loads its own, on first use)."""
    registration = registered_agents().get(name)
    if registration is None:
        known = sorted(registered_agents())
        raise AgentError(name, f"no such agent; registered agents: {known} (add one with @register_agent)")
    return _build(registration, policy, embedder)


def _build(registration: Registration, policy: Policy, embedder: Embedder | None = None) -> Agent:
    encode = embedder.encode if embedder is not None else partial(_encode_in_process, _embedder_model(policy))
    parts = SharedParts(encode, policy.resolve, policy.limits.agent_timeout_s)
    return registration.build(policy.agents.section(registration.name), parts)


def _encode_in_process(model: Path | None, texts: list[str]) -> np.ndarray:
    return _process_embedder(model).encode(texts)


@cache
def _process_embedder(model: Path | None) -> Embedder:
    """One embedder per model and process (a Ray replica's agents share it), loaded on first use."""
    return Embedder(model)


def _embedder_model(policy: Policy) -> Path | None:
    return policy.resolve(policy.router.embedder) if policy.router.embedder else None


def build_agents(policy: Policy, embedder: Embedder) -> dict[str, Agent]:
    return {name: build_agent(policy, name, embedder) for name in hosted_agents(policy)}


def agent_factories(policy: Policy) -> dict[str, Callable[[], Agent]]:
    """Picklable constructors, for pools that build agents in other processes (Ray Serve replicas).

    Each carries its registration: the registry of another process knows only the built-ins.
    """
    registry = registered_agents()
    return {name: partial(_build, registry[name], policy) for name in hosted_agents(policy)}


def build_pool(policy: Policy, embedder: Embedder, backend: Backend | None = None) -> AgentPool:
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


def build_fallback(policy: Policy) -> FallbackAgent | None:
    """The large model, or None when disabled. Its redactor has its own in-process extraction agent (the
    pool's may run elsewhere, or be replaced by a registration), built only when the policy redacts PII."""
    if not policy.fallback.enabled:
        return None
    redactor = (
        Redactor(ExtractionAgent(policy.agents.extract.spacy_model), frozenset(policy.privacy.entities))
        if policy.privacy.redact_pii
        else None
    )
    return FallbackAgent(
        build_chat_model(policy.fallback),
        model_label(policy.fallback),
        policy.fallback.system_prompt,
        redactor,
        FallbackSettings.from_config(policy.fallback),
    )


def build_shadow(
    policy: Policy,
    fallback: FallbackAgent | None,
    budget: EscalationBudget | None,
    decision_log: DecisionLog | None,
) -> Shadow | None:
    """A shadow sampler when the policy samples and a fallback exists; its records go to the decision log."""
    if fallback is None or policy.escalation.shadow.sample_rate <= 0:
        return None
    sink = decision_log.record_shadow if decision_log is not None else _discard
    return Shadow(policy, fallback, sink, budget)


def _discard(record: ShadowRecord) -> None:
    """Without a decision log the comparison has nowhere to be kept."""
