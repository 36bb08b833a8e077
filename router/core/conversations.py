"""Conversation memory: the last few turns per (tenant, conversation id), bounded in count and age.

Why not a LangGraph checkpointer: it keeps every step's full state (embeddings included) of every thread
forever, and a thread id is one flat namespace, so two API keys that pick the same conversation id would
share it. The router needs only the last `memory.turns` exchanges, scoped by tenant, with a TTL, a cap on
the number of conversations and deletion on request; that is this small store.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, TypeAdapter

from slm_router.policies import Policy

DEFAULT_TENANT = "default"


class Turn(BaseModel):
    """One earlier exchange of a conversation."""

    text: str
    route: str
    output: str


_TURNS = TypeAdapter(list[Turn])


class ConversationStore(Protocol):
    """Turns per (tenant, conversation); a tenant never sees another tenant's conversations."""

    def load(self, tenant: str, conversation_id: str) -> list[Turn]: ...

    def save(self, tenant: str, conversation_id: str, turns: list[Turn]) -> None: ...

    def delete(self, tenant: str, conversation_id: str) -> bool:
        """Forget one conversation; False when there was nothing to forget."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class MemoryStore:
    """In-process, least-recently-used first out beyond `max_conversations`, expired after `ttl_s`."""

    def __init__(self, max_conversations: int, ttl_s: float) -> None:
        self.max_conversations = max_conversations
        self.ttl_s = ttl_s
        self._items: OrderedDict[tuple[str, str], tuple[float, list[Turn]]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, tenant: str, conversation_id: str) -> list[Turn]:
        key = (tenant, conversation_id)
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return []
            if entry[0] < time.monotonic():
                del self._items[key]
                return []
            return list(entry[1])

    def save(self, tenant: str, conversation_id: str, turns: list[Turn]) -> None:
        key = (tenant, conversation_id)
        now = time.monotonic()
        with self._lock:
            self._items[key] = (now + self.ttl_s, list(turns))
            self._items.move_to_end(key)
            while len(self._items) > self.max_conversations:
                self._items.popitem(last=False)
            # Expired entries age out from the LRU end, so this is cheap on every write.
            while self._items:
                oldest_key, (expires, _) = next(iter(self._items.items()))
                if expires >= now:
                    break
                del self._items[oldest_key]

    def delete(self, tenant: str, conversation_id: str) -> bool:
        with self._lock:
            return self._items.pop((tenant, conversation_id), None) is not None

    def count(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        with self._lock:
            self._items.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    turns TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, conversation_id)
);
CREATE INDEX IF NOT EXISTS conversations_age ON conversations (updated_at);
"""


class SqliteStore:
    """On disk, so conversations survive a restart; the same TTL and cap as `MemoryStore`."""

    def __init__(self, path: Path, max_conversations: int, ttl_s: float) -> None:
        self.max_conversations = max_conversations
        self.ttl_s = ttl_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def load(self, tenant: str, conversation_id: str) -> list[Turn]:
        with self._lock:
            row = self._conn.execute(
                "SELECT turns FROM conversations "
                "WHERE tenant = ? AND conversation_id = ? AND updated_at >= ?",
                (tenant, conversation_id, time.time() - self.ttl_s),
            ).fetchone()
        return _TURNS.validate_json(row[0]) if row else []

    def save(self, tenant: str, conversation_id: str, turns: list[Turn]) -> None:
        now = time.time()
        payload = json.dumps([t.model_dump() for t in turns])
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?) ON CONFLICT (tenant, conversation_id) "
                "DO UPDATE SET turns = excluded.turns, updated_at = excluded.updated_at",
                (tenant, conversation_id, payload, now),
            )
            self._conn.execute("DELETE FROM conversations WHERE updated_at < ?", (now - self.ttl_s,))
            self._conn.execute(
                "DELETE FROM conversations WHERE rowid IN (SELECT rowid FROM conversations "
                "ORDER BY updated_at DESC LIMIT -1 OFFSET ?)",
                (self.max_conversations,),
            )

    def delete(self, tenant: str, conversation_id: str) -> bool:
        with self._lock, self._conn:
            cursor = self._conn.execute(
                "DELETE FROM conversations WHERE tenant = ? AND conversation_id = ?",
                (tenant, conversation_id),
            )
        return cursor.rowcount > 0

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM conversations").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_store(policy: Policy) -> ConversationStore:
    """The store `policy.memory` asks for."""
    memory = policy.memory
    if memory.backend == "sqlite":
        return SqliteStore(policy.resolve(memory.path or ""), memory.max_conversations, memory.ttl_s)
    return MemoryStore(memory.max_conversations, memory.ttl_s)
