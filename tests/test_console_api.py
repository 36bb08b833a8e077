"""The console's JSON API (/v1/console/) on a real service with a real Router: roles, the review queue and
labels, learn as a background job, writing a policy (never over the live one unless asked), reload and
rollback, and the privacy rule (no message text in any answer without `privacy.log_text`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import yaml

from slm_router.policies import DEFAULT_POLICY, Policy, load_policy
from slm_router.router.ops.decision_log import DecisionLog, default_log_path
from slm_router.router.ops.jobs import JobBusyError, JobRegistry, UnknownJobError
from slm_router.router.runnable import Router
from slm_router.router.service.app import create_app
from slm_router.router.service.console_api import Console, ConsoleError
from slm_router.router.service.gate import KeyRing, tenant_id
from tests.conftest import policy_with, serving
from tests.fake_llm import FakeLLM

VIEWER, OPERATOR = "viewer-key-1", "operator-key-1"
READ = {"Authorization": f"Bearer {VIEWER}"}
WRITE = {"Authorization": f"Bearer {OPERATOR}"}
# Escalated by the router's own doubt (general questions go to the fallback), so they fill the review queue.
DOUBTS = [
    "What is the best way to grow tomatoes on a balcony?",
    "Can you recommend a good novel about sailing for my holiday?",
    "How many kilometres is it from Lisbon to Porto by train?",
    "Which wine goes with grilled sardines at a summer party?",
]
ANSWERED = ["I love this blender, it works perfectly", "Order #A12345 was charged twice, refund me please"]


def _policy_file(base: Policy, directory: Path, fake: FakeLLM, log_text: bool) -> Path:
    """A policy YAML in its own directory (the console writes and reloads there), fallback on the fake."""
    policy = policy_with(
        base,
        fallback=fake.fallback_config(),
        **{"privacy.log_text": log_text, "decision_log.path": str(directory / "decisions.db")},
    )
    path = directory / "live.yaml"
    path.write_text(yaml.safe_dump(policy.portable_data(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, default_policy: Policy, _fake_llm_server: FakeLLM) -> Path:
    _fake_llm_server.reset()
    return _policy_file(default_policy, tmp_path_factory.mktemp("console"), _fake_llm_server, log_text=True)


@pytest.fixture(scope="module")
def url(live: Path, router: Router) -> Iterator[str]:
    policy = load_policy(live)
    service = Router(policy, pool=router.pool, embedder=router.embedder)
    app = create_app(service, policy.server, {VIEWER}, warmup=False, admin_keys={OPERATOR}, policy_path=live)
    with serving(app) as base_url:
        with httpx.Client(base_url=base_url, headers=READ, timeout=120) as client:
            for text in DOUBTS + ANSWERED:
                assert client.post("/v1/route", json={"text": text}).status_code == 200
        yield base_url


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers=READ, timeout=120) as c:
        yield c


def _error(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == kind


def test_a_key_is_needed_and_only_operators_change_anything(url: str, client: httpx.Client) -> None:
    _error(httpx.get(f"{url}/v1/console/stats"), 401, "unauthorized")
    _error(
        httpx.get(f"{url}/v1/console/review", headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
    )
    for path in ("stats", "quality", "review", "whatif", "jobs", "policy"):
        assert client.get(f"/v1/console/{path}").status_code == 200, path
    label = {"decision_id": 1, "route": "other", "out_of_scope": False}
    for path, body in [
        ("labels", label),
        ("learn", None),
        ("learn/abc/write", {}),
        ("policy/reload", {}),
        ("policy/rollback", None),
    ]:
        _error(client.post(f"/v1/console/{path}", json=body), 403, "forbidden")
    assert client.get("/v1/console/stats", params={"window": "2h"}).status_code == 422
    spec = client.get("/openapi.json").json()["paths"]
    assert {"/v1/console/stats", "/v1/console/labels", "/v1/console/jobs/{job_id}"} <= set(spec)
    assert "403" in spec["/v1/console/labels"]["post"]["responses"]


def test_stats_count_the_routed_requests(client: httpx.Client) -> None:
    overview = client.get("/v1/console/stats", params={"window": "15m"}).json()
    assert overview["totals"]["requests"] >= len(DOUBTS + ANSWERED)
    assert sum(sum(series) for series in overview["by_answered"].values()) == overview["totals"]["requests"]
    assert overview["by_answered"]["fallback"] and overview["escalated_by_reason"]


def test_labels_show_in_the_review_queue_and_learn_runs_to_done(client: httpx.Client) -> None:
    # A viewer (any API key) never reads messages: the queue holds every tenant's decisions.
    seen_by_viewer = client.get("/v1/console/review", params={"limit": 50}).json()
    assert seen_by_viewer and all(item["text"] is None and item["answer"] is None for item in seen_by_viewer)
    queue = client.get("/v1/console/review", params={"limit": 50}, headers=WRITE).json()
    doubts = [item for item in queue if item["text"] in DOUBTS]
    assert len(doubts) == len(DOUBTS) and all("escalated" in item["kinds"] for item in doubts)
    assert all(item["top_routes"] and item["label"] is None for item in doubts)

    for item in doubts[:3]:
        saved = client.post(
            "/v1/console/labels",
            json={"decision_id": item["decision_id"], "route": "triage", "out_of_scope": False},
            headers=WRITE,
        )
        assert saved.status_code == 200, saved.text
        assert saved.json()["labelled_by"] == tenant_id(OPERATOR.encode())
    wrong = {"decision_id": doubts[3]["decision_id"], "route": "refunds", "out_of_scope": False}
    _error(client.post("/v1/console/labels", json=wrong, headers=WRITE), 422, "invalid_label")
    _error(
        client.post(
            "/v1/console/labels", json={**wrong, "decision_id": 10**9, "route": "other"}, headers=WRITE
        ),
        422,
        "invalid_label",
    )

    relabelled = {item["decision_id"]: item["label"] for item in client.get("/v1/console/review").json()}
    assert [relabelled[item["decision_id"]]["route"] for item in doubts[:3]] == ["triage"] * 3
    assert relabelled[doubts[3]["decision_id"]] is None

    started = client.post("/v1/console/learn", headers=WRITE)
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    assert started.json()["labels"] == 3
    job = _finished(client, job_id)
    assert job["state"] == "done", job
    assert job["progress"] == 1.0 and job["started_by"] == tenant_id(OPERATOR.encode())
    result = job["result"]
    assert result["labelled"] == 3 and result["learned"].get("triage", 0) >= 1
    assert {"escalation_rate_before", "escalation_rate_after", "accuracy_before", "accuracy_after"} <= set(
        result
    )
    assert "policy" not in result  # the candidate holds the labelled texts: only write puts it anywhere
    _error(client.get("/v1/console/jobs/nope"), 404, "not_found")


def _finished(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    seen = [0.0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/console/jobs/{job_id}").json()
        assert job["progress"] >= seen[-1]  # progress never goes back
        seen.append(job["progress"])
        if job["state"] in ("done", "failed"):
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running after {timeout_s} s: {seen[-5:]}")


def _routes(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in client.get("/v1/routes").json()}


def test_write_never_replaces_the_live_policy_unless_asked_and_reload_swaps_rollback_restores(
    client: httpx.Client, live: Path
) -> None:
    job_id = next(j["id"] for j in client.get("/v1/console/jobs").json() if j["state"] == "done")
    original = live.read_bytes()
    before = _routes(client)

    _error(
        client.post(f"/v1/console/learn/{job_id}/write", json={"path": live.name}, headers=WRITE),
        409,
        "live_policy",
    )
    _error(
        client.post(f"/v1/console/learn/{job_id}/write", json={"path": "../x.yaml"}, headers=WRITE),
        422,
        "invalid_request",
    )
    written = client.post(f"/v1/console/learn/{job_id}/write", json={"path": "learned.yaml"}, headers=WRITE)
    assert written.status_code == 201, written.text
    assert written.json() == {
        "path": str(live.parent / "learned.yaml"),
        "name": "learned.yaml",
        "overwrote_live": False,
    }
    _error(
        client.post(f"/v1/console/learn/{job_id}/write", json={"path": "learned.yaml"}, headers=WRITE),
        409,
        "exists",
    )
    assert live.read_bytes() == original  # writing serves nothing and touches nothing live
    assert _routes(client) == before

    state = client.post("/v1/console/policy/reload", json={"path": "learned.yaml"}, headers=WRITE).json()
    assert state["live"] == str(live.parent / "learned.yaml") and state["can_rollback"] is True
    after = _routes(client)
    assert after["triage"]["examples"] > before["triage"]["examples"]  # the new router serves

    state = client.post("/v1/console/policy/rollback", headers=WRITE).json()
    assert state["live"] == str(live) and state["can_rollback"] is False
    assert _routes(client) == before
    _error(client.post("/v1/console/policy/rollback", headers=WRITE), 409, "no_previous")

    # A hand-edited policy next to the live one: a moved threshold serves after reload, and rolls back.
    edited = yaml.safe_load(original)
    edited["routes"]["sentiment"]["threshold"] = 0.77
    warranty = ["Is my kettle still under warranty?", "How long is the warranty on this blender?"]
    edited["routes"]["warranty"] = {"agent": None, "utterances": warranty}
    (live.parent / "edited.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    client.post("/v1/console/policy/reload", json={"path": "edited.yaml"}, headers=WRITE).raise_for_status()
    assert _routes(client)["sentiment"]["threshold"] == 0.77
    assert client.post("/v1/route", json={"text": ANSWERED[0]}).status_code == 200
    added = client.post("/v1/route", json={"text": warranty[0], "route": "warranty"})
    assert added.status_code == 200 and added.json()["route"] == "warranty", added.text
    assert 'route="warranty"' in client.get("/metrics").text  # counted under its name, not as `multi`
    client.post("/v1/console/policy/rollback", headers=WRITE).raise_for_status()
    assert _routes(client) == before
    (live.parent / "broken.yaml").write_text("routes: {only: {}}\n")
    _error(
        client.post("/v1/console/policy/reload", json={"path": "broken.yaml"}, headers=WRITE),
        422,
        "invalid_policy",
    )
    _error(
        client.post("/v1/console/policy/reload", json={"path": "absent.yaml"}, headers=WRITE),
        404,
        "not_found",
    )

    # Only an explicit overwrite_live replaces the live file; reloading it (no path) then serves it.
    replaced = client.post(f"/v1/console/learn/{job_id}/write", json={"overwrite_live": True}, headers=WRITE)
    assert replaced.status_code == 201 and replaced.json()["overwrote_live"] is True
    assert live.read_bytes() != original
    client.post("/v1/console/policy/reload", headers=WRITE).raise_for_status()
    assert _routes(client)["triage"]["examples"] == after["triage"]["examples"]
    client.post("/v1/console/policy/rollback", headers=WRITE).raise_for_status()
    live.write_bytes(original)


def test_without_log_text_no_answer_contains_message_text(
    tmp_path: Path, default_policy: Policy, router: Router, fake_llm: FakeLLM
) -> None:
    path = _policy_file(default_policy, tmp_path, fake_llm, log_text=False)
    policy = load_policy(path)
    service = Router(policy, pool=router.pool, embedder=router.embedder)
    app = create_app(service, policy.server, None, warmup=False, policy_path=path)  # auth off: an operator
    secrets_ = [
        "Where can I buy Zanzibarian pepper for Mrs Quillfeather's stew?",
        "My order QX-99812 from Quillfeather never arrived, I am furious",
    ]
    with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=120) as c:
        for text in secrets_:
            assert c.post("/v1/route", json={"text": text}).status_code == 200
        queue = c.get("/v1/console/review").json()
        assert queue and all(item["text"] is None and item["answer"] is None for item in queue)
        first = queue[0]["decision_id"]
        assert c.post("/v1/console/labels", json={"decision_id": first, "route": "other"}).status_code == 200
        with_answer = {"decision_id": first, "route": "extract", "answer": "ORDER_ID QX-99812"}
        _error(c.post("/v1/console/labels", json=with_answer), 422, "invalid_label")  # would store content
        _error(c.post("/v1/console/learn"), 409, "no_text")
        answers = [
            c.get(f"/v1/console/{path}", params=params)
            for path, params in [
                ("stats", {"window": "15m"}),
                ("quality", {"window": "1h"}),
                ("review", {}),
                ("whatif", {"route": "other", "thresholds": "0.2,0.5,0.8"}),
                ("jobs", {}),
                ("policy", {}),
            ]
        ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.text.lower()
        for word in ("zanzibar", "quillfeather", "qx-99812", "pepper", "furious"):
            assert word not in body, (answer.url, word)


def test_job_registry_runs_one_per_kind_with_progress_and_forgets_old_jobs() -> None:
    jobs = JobRegistry(keep=2)
    gate = threading.Event()

    def slow(progress: Any) -> dict[str, int]:
        progress(0.5)
        progress(0.2)  # never goes back
        progress(7)  # clamped
        gate.wait(10)
        return {"n": 1}

    first = jobs.submit("learn", slow, lambda v: dict(v), started_by="key-x")
    with pytest.raises(JobBusyError, match="already"):
        jobs.submit("learn", slow, dict)
    other = jobs.submit("other", lambda _: {"n": 2}, dict)  # another kind runs beside it
    assert jobs.wait(other.id, 10).result == {"n": 2}
    running = jobs.get(first.id)
    assert running.state == "running" and running.progress == 1.0
    gate.set()
    done = jobs.wait(first.id, 10)
    assert (done.state, done.result, jobs.value(first.id)) == ("done", {"n": 1}, {"n": 1})

    def broken(_: Any) -> None:
        raise ValueError("the labels name no route")

    failed = jobs.wait(jobs.submit("learn", broken, dict).id, 10)
    assert (failed.state, failed.error) == ("failed", "the labels name no route")
    bug = jobs.wait(jobs.submit("learn", lambda _: 1 / 0, dict).id, 10)
    assert bug.error is not None and bug.error.startswith("internal error (incident ")
    assert len(jobs.jobs()) == 2  # keep=2: the oldest finished jobs are gone
    with pytest.raises(UnknownJobError):
        jobs.get(first.id)


def test_keyring_roles() -> None:
    ring = KeyRing({VIEWER}, {OPERATOR})
    assert ring.caller(VIEWER) is not None and ring.caller(VIEWER).role == "viewer"  # type: ignore[union-attr]
    operator = ring.caller(OPERATOR.encode(), "shop-1")
    assert operator is not None and operator.role == "operator"
    assert operator.tenant == tenant_id(OPERATOR.encode()) + "/shop-1" and OPERATOR not in operator.key_id
    assert ring.caller("wrong") is None and ring.caller(None) is None
    assert KeyRing(None).caller(None) == ("default", "operator", "local")


def test_a_packaged_preset_is_never_written_over(router: Router) -> None:
    """Served from the packaged default, new policies go to the data directory, and overwrite_live is
    refused: the preset belongs to the installed package."""
    console = Console(cast(Any, SimpleNamespace(router=router)), KeyRing(None), Path(DEFAULT_POLICY))
    assert console.policy_dir == default_log_path().parent / "policies"
    job = console.jobs.submit("learn", lambda _: SimpleNamespace(policy={}), lambda _: {})
    console.jobs.wait(job.id, 10)
    with pytest.raises(ConsoleError, match="packaged preset") as refused:
        console.write_policy(job.id, overwrite_live=True)
    assert (refused.value.status, refused.value.kind) == (409, "no_live_policy")
    with pytest.raises(ConsoleError, match="policy name") as outside:
        console.write_policy(job.id, "/etc/passwd.yaml")
    assert outside.value.status == 422


def test_a_broken_decision_log_answers_503_on_every_read(router: Router, tmp_path: Path) -> None:
    """A log that is not a database (a disk filled mid-write, a wrong path) is the service's dependency
    failing, not a bug: every read says so with 503, never a 500."""
    broken = tmp_path / "decisions.db"
    broken.write_bytes(b"this is not an SQLite database" * 100)
    served = SimpleNamespace(decision_log=DecisionLog(broken), policy=router.policy, routes=router.routes)
    console = Console(cast(Any, SimpleNamespace(router=served)), KeyRing(None))
    reads = {
        "stats": lambda: console.stats("1h"),
        "quality": lambda: console.quality("24h"),
        "review": lambda: console.review(role="operator"),
        "whatif": lambda: console.whatif(None, [0.3, 0.5]),
    }
    for name, read in reads.items():
        with pytest.raises(ConsoleError, match=r"decision log .*not a database") as failed:
            read()
        assert (failed.value.status, failed.value.kind) == (503, "decision_log_unavailable"), name
