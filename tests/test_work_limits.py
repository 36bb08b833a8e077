"""Per-agent work limits: one pathological input costs one request, never the specialist for everyone.

Measured before these limits: 19,999 x "ã" forced to the translate route kept the Bergamot child busy for
more than 12 minutes (one unsplittable "sentence": the degenerate decode runs to its length limit and every
step attends over the whole input, so the work grows about quadratically with the length).
"""

from __future__ import annotations

import threading
import time

import pytest

from slm_router.agents.base import AgentError, AgentInput, TranslationOutput
from slm_router.agents.hosting.isolation import WorkerProcess
from slm_router.agents.translation import FastTranslateBackend, TranslationAgent, split_for_engine
from slm_router.router.runnable import Router

HANG = "tests.hang_engine"


class RecordingBackend:
    """Echoes upper-cased text, remembering every text it was given."""

    name = "recording"
    pairs = frozenset({("pt", "en")})

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.timeout_s: float | None = None

    def translate_batch(self, texts: list[str], source: str, target: str) -> list[tuple[str, float]]:
        self.calls.append(texts)
        return [(t.upper(), 0.5 if t.startswith("b") else 0.9) for t in texts]


# --- WorkerProcess: a hung child is killed, the next request gets a fresh one ---


def test_hung_child_times_out_is_killed_and_the_next_request_succeeds() -> None:
    worker = WorkerProcess(HANG, agent="test", timeout_s=1.0)
    try:
        first = worker.request({"text": "a"})
        assert first["text"] == "a"
        hung = worker._proc
        started = time.monotonic()
        with pytest.raises(AgentError, match=r"timed out after 1 s; engine restarted"):
            worker.request({"hang": True})
        assert time.monotonic() - started < 5
        assert hung is not None and hung.poll() is not None  # killed, not left running
        again = worker.request({"text": "b"})
        assert again["text"] == "b" and again["pid"] != first["pid"]
        assert worker.restarts == 1 and worker.timeouts == 1
    finally:
        worker.close()


def test_request_queued_behind_a_hung_one_proceeds_with_a_fresh_child() -> None:
    worker = WorkerProcess(HANG, agent="test")
    outcomes: dict[str, object] = {}

    def call(key: str, payload: dict[str, object], timeout_s: float) -> None:
        try:
            outcomes[key] = worker.request(payload, timeout_s=timeout_s)
        except AgentError as exc:
            outcomes[key] = exc

    try:
        hung = threading.Thread(target=call, args=("hung", {"hang": True}, 1.0))
        hung.start()
        time.sleep(0.3)  # the hung request holds the child; this one waits for it
        queued = threading.Thread(target=call, args=("queued", {"text": "next"}, 5.0))
        queued.start()
        hung.join(10)
        queued.join(10)
        assert not hung.is_alive() and not queued.is_alive()
        assert isinstance(outcomes["hung"], AgentError)
        assert isinstance(outcomes["queued"], dict) and outcomes["queued"]["text"] == "next"
    finally:
        worker.close()


def test_child_that_never_reads_cannot_block_a_large_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 MB does not fit in the pipe: writing it must not hold the caller past its timeout."""
    monkeypatch.setenv("HANG_ENGINE_AT_START", "1")
    worker = WorkerProcess(HANG, agent="test", timeout_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(AgentError, match="timed out"):
            worker.request({"text": "x" * 1_000_000})
        assert time.monotonic() - started < 5
    finally:
        worker.close()


# --- Chunking and size limits in the translation agent ---


@pytest.mark.parametrize(
    "text",
    [
        "ã" * 1000,  # no space, no punctuation: hard-wrapped
        "Olá mundo. " * 60,
        "a" * 50 + " " + "b" * 700,
        "Primeira linha.\n\nSegunda linha! E mais?  Sim.",
        "x y " * 300,
    ],
)
def test_split_for_engine_bounds_every_piece_and_loses_nothing(text: str) -> None:
    pieces = split_for_engine(text, 100)
    assert "".join(pieces) == text
    assert all(0 < len(p) <= 100 for p in pieces)


def test_split_for_engine_keeps_sentences_whole_when_they_fit() -> None:
    assert split_for_engine("short", 100) == ["short"]
    assert split_for_engine("Um dois. Três quatro! Cinco?", 14) == ["Um dois. ", "Três quatro! ", "Cinco?"]


def test_long_text_goes_to_the_engine_in_bounded_chunks() -> None:
    backend = RecordingBackend()
    agent = TranslationAgent([backend], chunk_chars=50)
    text = "ana " * 30 + "\n\n" + "b" * 120
    [result] = agent.predict_batch([AgentInput(text=text, params={"source_language": "pt"})])
    [texts] = backend.calls
    assert len(texts) > 1 and all(len(t) <= 50 for t in texts)
    assert result.output == text.strip().upper()  # pieces joined back with their own whitespace
    assert isinstance(result.details, TranslationOutput)
    assert 0.5 < result.confidence < 0.9  # length-weighted over the chunks


def test_short_text_goes_to_the_engine_as_it_is() -> None:
    backend = RecordingBackend()
    agent = TranslationAgent([backend], chunk_chars=50)
    [result] = agent.predict_batch([AgentInput(text="olá", params={"source_language": "pt"})])
    assert backend.calls == [["olá"]] and result.output == "OLÁ" and result.confidence == pytest.approx(0.9)


def test_text_over_max_chars_is_unsupported_without_running_the_engine() -> None:
    backend = RecordingBackend()
    agent = TranslationAgent([backend], max_chars=100)
    [result] = agent.predict_batch([AgentInput(text="ã" * 101, params={"source_language": "pt"})])
    assert not result.supported and result.confidence == 0.0
    assert result.note is not None and "too long" in result.note
    assert backend.calls == []


def test_agent_timeout_is_handed_to_backends_that_take_one() -> None:
    recording, explicit = RecordingBackend(), RecordingBackend()
    explicit.timeout_s = 3.0
    TranslationAgent([recording, explicit], timeout_s=12.0)
    assert recording.timeout_s == 12.0 and explicit.timeout_s == 3.0  # an explicit limit is kept
    fast = FastTranslateBackend()
    try:
        TranslationAgent([fast], timeout_s=7.0)
        assert fast.timeout_s == 7.0
    finally:
        fast.close()


def test_real_engine_on_unsplittable_text_is_bounded() -> None:
    """Unchunked, 1,600 x "ã" costs the engine ~6 s and 3,200 ~20 s; in 400-char chunks it is linear."""
    agent = TranslationAgent(timeout_s=60.0)
    try:
        started = time.monotonic()
        [result] = agent.predict_batch([AgentInput(text="ã" * 1600, params={"source_language": "pt"})])
        assert time.monotonic() - started < 30
        assert isinstance(result.details, TranslationOutput)
    finally:
        for backend in agent.backends:
            if isinstance(backend, FastTranslateBackend):
                backend.close()


# --- The whole router: the measured case ---


def test_forced_pathological_translate_request_answers_promptly(router: Router) -> None:
    started = time.monotonic()
    result = router.invoke({"text": "ã" * 19_999, "route": "translate"})
    assert time.monotonic() - started < 60
    assert result.route == "translate"
    assert "too long to translate locally" in result.reason  # refused by the specialist, not ground through
    started = time.monotonic()
    normal = router.invoke(
        {"text": "Translate to English: quero cancelar o meu pedido", "route": "translate"}
    )
    assert time.monotonic() - started < 30
    assert normal.action == "specialist" and "cancel" in normal.output.lower()
