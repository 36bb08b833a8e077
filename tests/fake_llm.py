"""A fake OpenAI-compatible chat server on 127.0.0.1, for fault tests of the fallback.

A real uvicorn server in a background thread, answering `POST /v1/chat/completions` (non-streaming, with
usage) in the mode the test sets through the Python handle:

- `ok`: answers "fake answer: <last user message>" (`recording` is the same: every request body is kept in
  `requests` whatever the mode); with `stream: true`, as OpenAI-format SSE chunks of `chunk_chars`
  characters each (so a placeholder like "[EMAIL_1]" arrives split), and the usage chunk when asked;
- `slow`: sleeps `delay_s`, then answers;
- `hung`: answers only once released (`release()`, `reset()`, `set_mode(...)`, `stop()`);
- `error`: answers HTTP `status` (500 unless told) at once;
- `cut`: like `ok`, but a stream breaks off after half its chunks (the connection drops mid-answer);
- `down`: the server is stopped, so connections are refused (`stop()`; `start()` brings it back).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

Mode = Literal["ok", "recording", "slow", "hung", "error", "cut", "down"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            return str(content)
    return ""


class FakeLLM:
    """The handle: `base_url` (ends in /v1, as ChatOpenAI wants it), `set_mode`, `requests`, `stop`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.mode: Mode = "ok"
        self.delay_s = 0.0
        self.status = 500
        self.reply: str | None = None  # a fixed answer instead of the echo
        self.chunk_chars = 3  # characters per streamed chunk
        self._requests: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []  # each request's HTTP headers, beside `_requests`
        self._lock = threading.Lock()
        self._generation = 0  # bumped to release every waiting request
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # --- what tests use ---

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The bodies received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def fallback_config(self, timeout_s: float = 10, **extra: Any) -> dict[str, Any]:
        """A policy's `fallback` section that points the router at this server (for `policy_with`)."""
        return {"kind": "openai", "base_url": self.base_url, "model": "fake", "timeout_s": timeout_s} | extra

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The HTTP headers of each request in `requests`, lower-cased names (a copy)."""
        with self._lock:
            return list(self._headers)

    @property
    def running(self) -> bool:
        return self._server is not None

    def set_mode(
        self, mode: Mode, delay_s: float | None = None, status: int | None = None, reply: str | None = None
    ) -> None:
        """Switch at run time; requests already waiting (slow, hung) are released. `down` stops the server;
        any other mode starts it again if it is down."""
        with self._lock:
            self.mode = mode
            self.delay_s = delay_s if delay_s is not None else (2.0 if mode == "slow" else 0.0)
            self.status = status if status is not None else 500
            self.reply = reply
        self.release()
        if mode == "down":
            self.stop()
        elif not self.running:
            self.start()

    def release(self) -> None:
        """Let every slow or hung request answer now."""
        with self._lock:
            self._generation += 1

    def reset(self) -> None:
        """Back to `ok`, running, nothing recorded."""
        self.set_mode("ok")
        with self._lock:
            self._requests.clear()
            self._headers.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The recorded bodies once there are at least `count` (raises after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.requests
            if len(seen) >= count:
                return seen
            time.sleep(0.01)
        raise TimeoutError(f"fake LLM got {len(self.requests)} requests, expected {count}")

    def start(self) -> None:
        if self._server is not None:
            return
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="fake-llm", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake LLM server did not start on port {self.port}")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Close the listening socket: new connections are refused until `start()`."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.release()
        server.should_exit = True
        thread.join(timeout=10)
        self._server = self._thread = None

    # --- the server ---

    async def _wait(self, seconds: float | None, generation: int) -> None:
        """Sleep `seconds` (None: forever), cut short when released."""
        until = None if seconds is None else time.monotonic() + seconds
        while self._generation == generation and (until is None or time.monotonic() < until):
            await asyncio.sleep(0.01)

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "tests"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            with self._lock:
                self._requests.append(body)
                self._headers.append(dict(request.headers))
                mode, delay, status, reply = self.mode, self.delay_s, self.status, self.reply
                generation, number = self._generation, len(self._requests)
            if mode == "error":
                return JSONResponse(
                    {"error": {"message": f"fake failure {status}", "type": "server_error", "code": status}},
                    status_code=status,
                )
            if mode in ("slow", "hung"):
                await self._wait(delay if mode == "slow" else None, generation)
            prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages") or []) // 4 + 1
            content = reply if reply is not None else f"fake answer: {_last_user_text(body)}"
            completion = len(content) // 4 + 1
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            if body.get("stream"):
                return StreamingResponse(
                    self._chunks(body, number, content, usage, cut=mode == "cut"),
                    media_type="text/event-stream",
                )
            return {
                "id": f"chatcmpl-fake-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }

        return app

    def _chunks(
        self, body: dict[str, Any], number: int, content: str, usage: dict[str, int], cut: bool = False
    ) -> Any:
        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {
                "id": f"chatcmpl-fake-{number}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(chunk)}\n\n"

        async def events() -> Any:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            starts = range(0, len(content), self.chunk_chars)
            for start in starts:
                if cut and start >= len(starts) // 2 * self.chunk_chars:
                    raise ConnectionAbortedError("fake LLM: the stream breaks off here")
                piece = content[start : start + self.chunk_chars]
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                await asyncio.sleep(0)
            yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
            if (body.get("stream_options") or {}).get("include_usage"):
                yield event([], usage=usage)
            yield "data: [DONE]\n\n"

        return events()
