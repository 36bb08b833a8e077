"""Specialist small models and where they run."""

from slm_router.agents.base import Agent, AgentError, AgentInput, AgentOutput, AgentResult
from slm_router.agents.extraction import ExtractionAgent
from slm_router.agents.hosting.local import AgentPool, LocalPool
from slm_router.agents.registry import (
    Registration,
    SharedParts,
    register_agent,
    registered_agents,
    unregister_agent,
)
from slm_router.agents.sentiment import SentimentAgent
from slm_router.agents.translation import TranslationAgent

__all__ = [
    "Agent",
    "AgentError",
    "AgentInput",
    "AgentOutput",
    "AgentPool",
    "AgentResult",
    "ExtractionAgent",
    "LocalPool",
    "Registration",
    "SentimentAgent",
    "SharedParts",
    "TranslationAgent",
    "register_agent",
    "registered_agents",
    "unregister_agent",
]
