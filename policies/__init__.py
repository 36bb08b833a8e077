"""Escalation policies: the validated configuration of a router."""

from slm_router.policies.loader import DEFAULT_POLICY, PolicyError, load_policy, policy_from_dict, preset_path
from slm_router.policies.schema import FallbackConfig, Policy, PrivacyPolicy, RoutePolicy

__all__ = [
    "DEFAULT_POLICY",
    "FallbackConfig",
    "Policy",
    "PolicyError",
    "PrivacyPolicy",
    "RoutePolicy",
    "load_policy",
    "policy_from_dict",
    "preset_path",
]
