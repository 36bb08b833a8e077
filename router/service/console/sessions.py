"""Console sessions: the browser holds only a random id; the role it maps to lives in this process.

Why not a signed cookie with the role inside: a session must end when the operator logs out or the
server restarts, and an API key must never travel in a cookie. A stolen id is worth one session (idle
timeout, bounded count), and every form also needs the session's CSRF token, which a cross-site page
cannot read.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["viewer", "operator"]
COOKIE = "slm_console"
IDLE_S = 8 * 3600.0
MAX_SESSIONS = 1_000


@dataclass
class Session:
    """One signed-in browser: its role, who it acts for (a key fingerprint, never the key), its CSRF token."""

    role: Role
    who: str
    tenant: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionStore:
    """Random id -> Session, in memory: idle ones expire; beyond the cap the least recently used go."""

    def __init__(self, idle_s: float = IDLE_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, role: Role, who: str, tenant: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(role=role, who=who, tenant=tenant)
        with self._lock:
            self._sessions[sid] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now - session.seen > self.idle_s:
                del self._sessions[sid]
                return None
            session.seen = now
            self._sessions.move_to_end(sid)
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)
