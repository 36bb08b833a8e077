"""What the controller graph runs with: built once from a policy (router/compose.py), shared by requests."""

from __future__ import annotations

from dataclasses import dataclass

from slm_router.agents.fallback import FallbackAgent
from slm_router.agents.hosting import AgentPool
from slm_router.policies import Policy
from slm_router.router.core.budget import EscalationBudget
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.index import RouteIndex


@dataclass
class Components:
    policy: Policy
    embedder: Embedder
    index: RouteIndex
    pool: AgentPool
    fallback: FallbackAgent | None
    budget: EscalationBudget | None = None
