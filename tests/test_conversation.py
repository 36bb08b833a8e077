"""Conversation memory: a follow-up is routed with its context, kept per tenant and conversation, bounded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from langchain_core.runnables import RunnableConfig

from slm_router.policies import Policy
from slm_router.router.core.conversations import DEFAULT_TENANT, MemoryStore, SqliteStore, Turn
from slm_router.router.runnable import Router
from tests.conftest import policy_with
from tests.test_fallback import _Capture

FIRST = "Where is my order 12345? It's been two weeks and I'm getting really angry."
FOLLOW_UP = "and what about my other order?"


def test_follow_up_is_routed_with_its_context(router: Router) -> None:
    alone = router.invoke(FOLLOW_UP)
    router.invoke({"text": FIRST, "conversation_id": "conv-follow-up"})
    result = router.invoke({"text": FOLLOW_UP, "conversation_id": "conv-follow-up"})
    classify = next(t for t in result.trace if t.node == "classify")
    assert classify.info["used_context"] is True and alone.trace[1].info["used_context"] is False
    assert result.route == "extract" and alone.route == "other"


def test_conversations_are_separate_and_the_fallback_sees_earlier_turns(router: Router) -> None:
    assert router.fallback is not None
    capture = _Capture()
    router.fallback.chat_model.callbacks = [capture]
    try:
        router.invoke({"text": FIRST, "conversation_id": "conv-a"})
        router.invoke(
            {"text": "What is the best way to grow tomatoes?", "conversation_id": "conv-a", "route": "other"}
        )
    finally:
        router.fallback.chat_model.callbacks = None
    assert any("two weeks" in sent for sent in capture.sent[-3:])  # the earlier turn went along
    other = router.invoke({"text": FOLLOW_UP, "conversation_id": "conv-b"})
    assert other.trace[1].info["used_context"] is False


def test_sqlite_memory_survives_a_restart(default_policy: Policy, router: Router, tmp_path: Path) -> None:
    policy = policy_with(
        default_policy, memory={"backend": "sqlite", "path": str(tmp_path / "conv.db"), "turns": 2}
    )
    Router(policy, embedder=router.embedder).invoke({"text": FIRST, "conversation_id": "c-sql"})
    restarted = Router(policy, embedder=router.embedder)
    result = restarted.invoke({"text": FOLLOW_UP, "conversation_id": "c-sql"})
    assert result.trace[1].info["used_context"] is True and (tmp_path / "conv.db").stat().st_size > 0
    turns = restarted.conversations.load(DEFAULT_TENANT, "c-sql")
    assert [t.text for t in turns] == [FIRST, FOLLOW_UP]
    restarted.invoke({"text": "thanks!", "conversation_id": "c-sql"})
    turns = restarted.conversations.load(DEFAULT_TENANT, "c-sql")
    assert [t.text for t in turns] == [FOLLOW_UP, "thanks!"]  # capped at memory.turns
    assert restarted.forget("c-sql") and restarted.conversations.load(DEFAULT_TENANT, "c-sql") == []


def _as(tenant: str) -> RunnableConfig:
    return {"configurable": {"tenant": tenant}}


def test_a_tenant_never_reads_another_tenants_conversation(router: Router) -> None:
    assert router.fallback is not None
    secret = "My name is Jane Roe, card 4111 1111 1111 1111, email jane.roe@example.com."
    router.invoke({"text": secret, "conversation_id": "shared-id"}, config=_as("acme"))
    capture = _Capture()
    router.fallback.chat_model.callbacks = [capture]
    try:
        router.invoke({"text": "What did I tell you before?", "conversation_id": "shared-id"}, _as("evil"))
    finally:
        router.fallback.chat_model.callbacks = None
    assert capture.sent and not any("jane" in sent.lower() or "4111" in sent for sent in capture.sent)
    assert router.conversations.load("evil", "shared-id")[0].text == "What did I tell you before?"
    assert router.conversations.load("acme", "shared-id")[0].text == secret
    assert not router.forget("shared-id", tenant="nobody") and router.forget("shared-id", tenant="acme")


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_memory_is_bounded_in_count_and_age(backend: str, tmp_path: Path) -> None:
    store = (
        MemoryStore(max_conversations=100, ttl_s=0.5)
        if backend == "memory"
        else SqliteStore(tmp_path / "c.db", max_conversations=100, ttl_s=0.5)
    )
    turn = [Turn(text="hello", route="other", output="hi")]
    n = 10_000 if backend == "memory" else 500
    for i in range(n):
        store.save("t", f"conv-{i}", turn)
    assert store.count() == 100
    assert store.load("t", "conv-0") == [] and store.load("t", f"conv-{n - 1}") == turn
    time.sleep(0.6)
    assert store.load("t", f"conv-{n - 1}") == []


def test_a_router_given_a_running_store_keeps_its_conversations(router: Router) -> None:
    """What a policy reload does: the new router reads the running router's conversations, and closing it
    leaves them to their owner."""
    router.invoke({"text": FIRST, "conversation_id": "conv-reload"})
    reloaded = Router(
        router.policy, pool=router.pool, embedder=router.embedder, conversations=router.conversations
    )
    follow_up = reloaded.invoke({"text": FOLLOW_UP, "conversation_id": "conv-reload"})
    assert next(t for t in follow_up.trace if t.node == "classify").info["used_context"] is True
    reloaded.close()
    assert len(router.conversations.load(DEFAULT_TENANT, "conv-reload")) == 2  # still open, both turns
