"""Shared fixtures: one real Router (real models) per test session, built from the packaged policy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from slm_router.policies import DEFAULT_POLICY, Policy, load_policy
from slm_router.router.runnable import Router

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["SLM_ROUTER_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["SLM_ROUTER_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))  # the decision log


@pytest.fixture(scope="session")
def default_policy() -> Policy:
    return load_policy(DEFAULT_POLICY)


@pytest.fixture(scope="session")
def router(default_policy: Policy) -> Router:
    return Router.from_policy(default_policy)


def policy_with(base: Policy, **updates: Any) -> Policy:
    """A copy of `base` with dotted-path updates: policy_with(p, **{"routes.sentiment.threshold": 0.9})."""
    data = base.model_dump(mode="python")
    for dotted, value in updates.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    policy = Policy.model_validate(data)
    policy.base_dir = base.base_dir
    return policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """A real llama.cpp OpenAI-compatible server on 127.0.0.1 serving the packaged GGUF."""
    from slm_router.agents.fallback import packaged_gguf_path

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(packaged_gguf_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--model_alias",
            "smollm2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(base_url, proc)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Ready means answering: the server stalls on its second request after start, so warm it twice."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with code {proc.returncode}")
        try:
            httpx.get(f"{base_url}/models", timeout=2).raise_for_status()
            break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        raise RuntimeError("llama.cpp server did not start in time")
    for _ in range(2):
        httpx.post(
            f"{base_url}/chat/completions",
            timeout=60,
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One real local Ray cluster for the whole test session; pools reuse it and leave it running."""
    import logging

    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield
    ray.shutdown()  # takes Serve with it


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a background thread; yields its base URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def _fake_llm_server() -> Iterator[Any]:
    from tests.fake_llm import FakeLLM

    fake = FakeLLM()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_llm(_fake_llm_server: Any) -> Iterator[Any]:
    """A fake OpenAI-compatible server (tests/fake_llm.py), one per session, back to `ok` for each test."""
    _fake_llm_server.reset()
    yield _fake_llm_server
    _fake_llm_server.reset()
