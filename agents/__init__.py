"""Specialist small models and where they run."""

from agents.base import Agent, AgentError, AgentInput, AgentResult
from agents.extraction import ExtractionAgent
from agents.hosting import AgentPool, LocalPool
from agents.registry import register_agent
from agents.sentiment import SentimentAgent
from agents.translation import TranslationAgent

__all__ = [
    "Agent",
    "AgentError",
    "AgentInput",
    "AgentPool",
    "AgentResult",
    "ExtractionAgent",
    "LocalPool",
    "SentimentAgent",
    "TranslationAgent",
    "register_agent",
]
