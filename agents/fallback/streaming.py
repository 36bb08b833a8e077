"""The fallback's answer as it is generated: from the provider's thread to the caller's event loop, with the
PII placeholders restored on the fly."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Mapping

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import Runnable

from slm_router.agents.redaction import Redactor

# What the tail of the text may be while it can still become a placeholder ("[", "[EMAIL", "[ EMAIL_1 "),
# and the longest such tail held back: anything longer is not one of ours.
_OPEN_PLACEHOLDER = re.compile(r"\[\s*(?:[A-Za-z_]+\d*\s*)?")
_MAX_HELD = 40


class Restorer:
    """Restores placeholders in text that arrives in pieces: a placeholder may be split across tokens
    ("[EM", "AIL_", "1]"), so the text from an unclosed `[` is held back until it closes or can no longer
    become a placeholder. `mapping` None: nothing was redacted, nothing is held."""

    def __init__(self, mapping: Mapping[str, str] | None) -> None:
        self.mapping = mapping
        self._held = ""

    def feed(self, text: str) -> str:
        if self.mapping is None:
            return text
        buffer = self._held + text
        cut = buffer.rfind("[")
        tail = buffer[cut:] if cut >= 0 else ""
        if tail and len(tail) <= _MAX_HELD and _OPEN_PLACEHOLDER.fullmatch(tail):
            buffer, self._held = buffer[:cut], tail
        else:
            self._held = ""
        return Redactor.restore(buffer, self.mapping)

    def flush(self) -> str:
        """What is still held once the answer is complete."""
        held, self._held = self._held, ""
        return held if self.mapping is None else Redactor.restore(held, self.mapping)


class TextStream:
    """One streamed attempt: `collect` runs on the fallback's thread, reads the chat model's stream, and
    hands each piece of restored text to `on_text` on the caller's loop (in order, before the attempt's
    own result reaches that loop). `stop()` (the caller stopped waiting) ends it: nothing more is handed
    over, and the provider's stream is closed, which stops an in-process generation."""

    def __init__(
        self,
        on_text: Callable[[str], None],
        mapping: Mapping[str, str] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.on_text = on_text
        self.loop = loop
        self.emitted = False  # once text went out, a failed attempt is not retried (the caller has it)
        self._restorer = Restorer(mapping)
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def collect(
        self, model: Runnable[LanguageModelInput, BaseMessage], messages: list[BaseMessage]
    ) -> BaseMessage:
        reply: AIMessageChunk | None = None
        for chunk in model.stream(messages):
            if self._stopped.is_set():
                break
            if isinstance(chunk, AIMessageChunk):
                reply = chunk if reply is None else reply + chunk
            self._emit(self._restorer.feed(str(chunk.content)))
        self._emit(self._restorer.flush())
        return reply if reply is not None else AIMessage(content="")

    def _emit(self, text: str) -> None:
        if not self.emitted:  # the whole answer is stripped; so is the start of the stream
            text = text.lstrip()
        if text and not self._stopped.is_set():
            self.emitted = True
            self.loop.call_soon_threadsafe(self.on_text, text)
