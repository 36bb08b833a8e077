"""Conversation memory: a follow-up is routed with its context, kept per conversation (memory or SQLite)."""

from __future__ import annotations

from pathlib import Path

from policies import Policy
from router.api import Router
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
        router.invoke({"text": "What is the best way to grow tomatoes?", "conversation_id": "conv-a"})
    finally:
        router.fallback.chat_model.callbacks = None
    assert any("order 12345" in sent for sent in capture.sent[-3:])  # the earlier turn went along
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
    state = restarted.memory_graph.get_state({"configurable": {"thread_id": "c-sql"}}).values
    assert [t.text for t in state["history"]] == [FIRST, FOLLOW_UP]
    restarted.invoke({"text": "thanks!", "conversation_id": "c-sql"})
    state = restarted.memory_graph.get_state({"configurable": {"thread_id": "c-sql"}}).values
    assert [t.text for t in state["history"]] == [FOLLOW_UP, "thanks!"]  # capped at memory.turns
