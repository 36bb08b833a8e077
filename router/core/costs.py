"""Estimated cost of an answer from the policy's price table: provider-reported tokens when the fallback
returns them, otherwise tokens estimated from characters."""

from __future__ import annotations

from slm_router.agents.base import AgentResult, FallbackOutput
from slm_router.policies import Policy
from slm_router.policies.schema import PricingConfig


def answer_cost(pricing: PricingConfig, result: AgentResult | None, text: str) -> float:
    if result is None:
        return 0.0
    details = result.details
    if isinstance(details, FallbackOutput):
        tokens_in = details.input_tokens or pricing.tokens(details.input_chars)
        tokens_out = details.output_tokens or pricing.tokens(details.output_chars)
        return pricing.cost("fallback", tokens_in, tokens_out)
    return pricing.cost(result.agent, pricing.tokens(len(text)), pricing.tokens(len(result.output)))


def fallback_request_cost(policy: Policy, texts: list[str], output_tokens: float | None = None) -> float:
    """What one fallback call costs on these texts, on average: the system prompt plus the mean text in,
    `output_tokens` out (default `fallback.max_tokens`, an upper bound: answers are usually shorter)."""
    pricing = policy.pricing
    chars_in = len(policy.fallback.system_prompt) + sum(map(len, texts)) / max(len(texts), 1)
    out = policy.fallback.max_tokens if output_tokens is None else output_tokens
    return pricing.cost("fallback", pricing.tokens(chars_in), out)
