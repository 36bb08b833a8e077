"""Generated inputs: hypothesis on the Python API, schemathesis against the service's own OpenAPI spec.

The promise checked: any input gets a typed answer — a `RouteResult`, or an `SlmRouterError` in Python
and a documented 4xx/5xx with the one JSON error shape over HTTP — never a crash or a stack trace.
Example counts are bounded so the default test run stays short; `make test-faults` runs more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from slm_router.policies import Policy
from slm_router.router.errors import SlmRouterError
from slm_router.router.result import RouteResult
from slm_router.router.runnable import Router
from slm_router.router.service.app import create_app
from tests.conftest import policy_with, serving
from tests.fake_llm import FakeLLM

KEY = "property-key"
EXAMPLES = int(os.environ.get("SLM_ROUTER_PROPERTY_EXAMPLES", "25"))
GENERATED = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)

# Any code point, surrogates and controls included: what a JSON body can carry once decoded.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def quick_router(default_policy: Policy, router: Router, _fake_llm_server: FakeLLM) -> Router:
    """The real router with a fast fake fallback, so many generated escalations stay cheap."""
    policy = policy_with(
        default_policy,
        fallback=_fake_llm_server.fallback_config(timeout_s=2),
        **{"limits.max_chars": 500},
    )
    return Router(policy, embedder=router.embedder)


def _typed(call: Any) -> RouteResult | SlmRouterError:
    try:
        return call()
    except SlmRouterError as exc:
        return exc


@GENERATED
@given(text=ANY_TEXT)
def test_any_text_gets_a_result_or_a_typed_error(quick_router: Router, text: str) -> None:
    outcome = _typed(lambda: quick_router.invoke(text))
    assert isinstance(outcome, RouteResult | SlmRouterError)
    if isinstance(outcome, RouteResult):
        assert outcome.route in quick_router.policy.routes and outcome.trace


@GENERATED
@given(
    text=ANY_TEXT,
    route=st.none() | st.sampled_from(["translate", "sentiment", "extract", "other", "nope"]),
    params=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3),
    metadata=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3),
    conversation=st.none() | ANY_TEXT,
)
def test_any_request_dict_gets_a_result_or_a_typed_error(
    quick_router: Router,
    text: str,
    route: str | None,
    params: dict[str, Any],
    metadata: dict[str, Any],
    conversation: str | None,
) -> None:
    request = {"text": text, "route": route, "params": params, "metadata": metadata}
    request["conversation_id"] = conversation
    outcome = _typed(lambda: quick_router.invoke(request))
    assert isinstance(outcome, RouteResult | SlmRouterError)


@GENERATED
@given(raw=st.binary(max_size=200))
def test_any_bytes_get_a_result_or_a_typed_error(quick_router: Router, raw: bytes) -> None:
    assert isinstance(_typed(lambda: quick_router.invoke(raw)), RouteResult | SlmRouterError)


# --- the HTTP contract ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_url(quick_router: Router) -> Iterator[str]:
    with serving(create_app(quick_router, quick_router.policy.server, {KEY}, warmup=False)) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(service_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{service_url}/openapi.json")


# A schema-valid body can still be refused by the policy (an unknown route name, text past
# limits.max_chars, only whitespace): those answers are documented 4xx, not contract breaks.
POLICY_DEPENDENT = schemathesis.checks.positive_data_acceptance


def test_every_endpoint_keeps_its_openapi_contract(api_schema: Any) -> None:
    """Generated bodies, paths and headers for every operation: no undocumented status, every body as the
    spec says (schemathesis' default checks), errors in the one JSON shape, never a traceback."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @GENERATED
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {KEY}"})
            case.validate_response(response, excluded_checks=[POLICY_DEPENDENT])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert {"type", "message"} <= set(error)
            assert "Traceback" not in response.text

        check()
