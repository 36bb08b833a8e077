"""The ASGI gate in front of the app: who is calling, how big the body is, and whether the caller is still
there — each settled before any work is done.

Why a raw ASGI middleware and not FastAPI dependencies: a dependency runs after FastAPI has read and parsed
the whole body, so an unauthenticated client could make the server buffer any amount (measured: a 200 MB
chunked body grew the server by 552 MB before its 401), and `Content-Length` alone says nothing about a
chunked body. Here the key is checked from the headers first, and the body is counted as it arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable, Collection
from typing import Any, Literal, NamedTuple

from slm_router.router.service.errors import error_bytes

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

TENANT_HEADER = b"x-slm-tenant"
MAX_TENANT_CHARS = 128
DRAIN_LIMIT = 16_000_000  # beyond it a refused body is not read at all: the connection is just closed
UNAUTHORIZED = "missing or invalid API key (Authorization: Bearer <key>)"
LOCAL_CALLER = "local"  # who acts when auth is off (loopback only): labels name it as their author

Role = Literal["viewer", "operator"]


def tenant_id(key: bytes) -> str:
    """A stable tenant name for an API key that does not reveal the key (logs, memory scopes)."""
    return "key-" + hashlib.sha256(key).hexdigest()[:16]


class Caller(NamedTuple):
    """Who a request acts for: its tenant, its role, and its key's id (never the key itself)."""

    tenant: str
    role: Role
    key_id: str


class KeyRing:
    """The accepted keys and which of them are operators' (`api_keys=None`: auth is off, everyone is an
    operator). The Gate asks it per request, and the console's login page per sign-in."""

    def __init__(self, api_keys: Collection[str] | None, admin_keys: Collection[str] = ()) -> None:
        self.admin_keys = [k.encode("utf-8") for k in admin_keys]
        self.keys = None if api_keys is None else [k.encode("utf-8") for k in api_keys] + self.admin_keys

    def caller(self, given: bytes | str | None, sub: str = "") -> Caller | None:
        """Who a key acts for (`sub`: the X-SLM-Tenant narrowing), or None when it is missing or wrong."""
        if self.keys is None:
            return Caller(sub or "default", "operator", LOCAL_CALLER)
        if isinstance(given, str):
            given = given.encode("utf-8")
        if not given:
            return None
        # Bytes compare in constant time and take any byte (a non-ASCII key is just a wrong key).
        match = next((k for k in self.keys if hmac.compare_digest(given, k)), None)
        if match is None:
            return None
        role: Role = "operator" if any(hmac.compare_digest(match, k) for k in self.admin_keys) else "viewer"
        key_id = tenant_id(match)
        return Caller(key_id + (f"/{sub}" if sub else ""), role, key_id)


class Gate:
    """Authenticates, bounds the body, and cancels the work of a client that went away.

    A `keyring` without keys turns authentication off (loopback only, see `api_keys.resolve_api_keys`):
    every caller is then an operator. The tenant the request acts for goes to `scope["state"]["tenant"]`: the
    key's id, narrowed by an optional `X-SLM-Tenant` header (so a platform can separate its own customers
    behind one key, but no key can reach into another key's tenants). `scope["state"]["role"]` is
    "operator" for an operator key, else "viewer"; `scope["state"]["key_id"]` names the key without
    revealing it ("" on an open path called without a key).
    """

    def __init__(
        self,
        app: ASGIApp,
        keyring: KeyRing,
        max_body_bytes: int,
        open_paths: Collection[str],
        on_error: Callable[[str], None],
        on_cancel: Callable[[], None],
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.max_body_bytes = max_body_bytes
        self.open_paths = frozenset(open_paths)
        self.on_error = on_error
        self.on_cancel = on_cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        caller = self._caller(headers)
        # The console's pages admit a browser by its session cookie themselves (service/console/pages.py).
        console = scope["path"] == "/console" or scope["path"].startswith("/console/")
        if caller is None and scope["path"] not in self.open_paths and not console:
            await self._refuse(send, 401, "unauthorized", UNAUTHORIZED)
            return
        state = scope.setdefault("state", {})
        state["tenant"] = caller.tenant if caller else "default"
        state["role"] = caller.role if caller else "viewer"
        state["key_id"] = caller.key_id if caller else ""
        body = await self._read_body(headers, receive, send)
        if body is None:
            return
        await self._run(scope, body, receive, send)

    def _caller(self, headers: dict[bytes, bytes]) -> Caller | None:
        """The caller's tenant and role, or None when the key is missing or wrong."""
        sub = headers.get(TENANT_HEADER, b"").decode("latin-1").strip()[:MAX_TENANT_CHARS]
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        return self.keyring.caller(given.strip() if scheme.lower() == b"bearer" else None, sub)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once a 413 has been sent: the count stops at the limit, chunked or not."""
        length = headers.get(b"content-length", b"")
        declared = int(length) if length.isdigit() else None
        if declared is not None and declared > self.max_body_bytes:
            if declared <= DRAIN_LIMIT:
                await self._drain(receive)
            await self._too_large(send, f"body of {declared} bytes")
            return None
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.max_body_bytes:
                if more:
                    await self._drain(receive, size)
                await self._too_large(send, f"body over {self.max_body_bytes} bytes")
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    async def _drain(receive: Receive, seen: int = 0) -> None:
        """Read and drop the rest of a refused body (up to DRAIN_LIMIT), so the client reads the 413
        instead of a connection reset; nothing is kept, so memory does not grow."""
        while seen <= DRAIN_LIMIT:
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    async def _run(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Run the app on the buffered body; if the client disconnects before the answer, cancel it."""
        disconnected = asyncio.Event()
        delivered = False
        answered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        work = asyncio.ensure_future(self.app(scope, replay, tracked_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and not answered:
                work.cancel()  # nobody is waiting for the answer: stop the work
                self.on_cancel()
            await asyncio.gather(work, return_exceptions=True)
        finally:
            watcher.cancel()
        failure = None if work.cancelled() else work.exception()
        if failure is not None:
            raise failure

    async def _too_large(self, send: Send, what: str) -> None:
        await self._refuse(
            send, 413, "body_too_large", f"{what}; the limit is {self.max_body_bytes} (server.max_body_bytes)"
        )

    async def _refuse(self, send: Send, status: int, kind: str, message: str) -> None:
        self.on_error(kind)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": error_bytes(kind, message)})
