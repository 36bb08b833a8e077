"""PII redaction: recall and precision per type on the labelled set, and what redaction costs.

    .venv/bin/python bench/pii.py [--repeats 3]

Scores use the criterion that tests/test_pii.py defines and asserts (a value is caught when every letter or
digit run of it is inside a placeholder; addresses by overlap), through the public Redactor with the
policy's default labels, languages detected as in the fallback; "given language" passes the set's own.
Detectors were tuned on dev only. Latency is wall time of `Redactor.redact` per message (language detection
included), after the models are loaded; the long inputs are 20,000-character messages built to stress a
detector (spaCy's tokenizer was quadratic on long runs of emoji or punctuation: see `spacy_tokenizer_raw_s`).
Writes bench/results/pii.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.test_pii holds the scoring the tests assert

from slm_router.agents.extraction import ExtractionAgent  # noqa: E402
from slm_router.agents.redaction import Redactor  # noqa: E402
from slm_router.policies.schema import ALL_PII  # noqa: E402
from tests.test_pii import Row, Score, load_rows, score  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BUDGET_S = 2.0  # what a 20,000-character message may take, at most


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _scores(redactor: Redactor, rows: list[Row], given: bool) -> dict[str, dict[str, float | int]]:
    texts = [row.text for row in rows]
    redactions = redactor.redact_batch(texts, [row.language for row in rows] if given else None)
    scores, _ = score(rows, redactions)
    return {kind: _row(s) for kind, s in scores.items()}


def _row(s: Score) -> dict[str, float | int]:
    return {
        "labelled": s.gold,
        "recall": round(s.recall, 3),
        "redacted": s.predicted,
        "precision": round(s.precision, 3),
    }


def _long_inputs(rows: list[Row]) -> dict[str, str]:
    def prose(language: str) -> str:
        text = " ".join(row.text for row in rows if row.language == language)
        return (text * (20_000 // len(text) + 1))[:20_000]

    return {
        "20k emoji": "😀" * 20_000,
        "19,999 x ã": "ã" * 19_999,
        "20k '!'": "!" * 20_000,
        "20k spaced emoji": "😀 " * 10_000,
        "20k English support prose (PII-dense)": prose("en"),
        "20k German support prose (PII-dense)": prose("de"),
        "20k digits and spaces": "1 " * 10_000,
        "20k dotted digits": "1." * 10_000,
        "20k phone numbers after cues": ("call me at 415 555 0100 " * 834)[:20_000],
        "20k hyphenated order ids": ("order A-1-2-3-4-5-6-7 " * 910)[:20_000],
    }


def _timed(redactor: Redactor, text: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        redactor.redact(text)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _raw_tokenizer_s(agent: ExtractionAgent) -> dict[str, float]:
    """The cause of the old 50 s: spaCy's tokenizer alone on unbroken emoji, which _model_view now blanks."""
    out = {}
    for n in (1_000, 2_000, 4_000):
        t = time.perf_counter()
        agent.nlp.tokenizer("😀" * n)
        out[f"{n} emoji"] = round(time.perf_counter() - t, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed passes over the messages and long inputs"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "pii.json")
    args = parser.parse_args()

    agent = ExtractionAgent()
    redactor = Redactor(agent, labels=ALL_PII)
    start = time.perf_counter()
    redactor.redact("Hi, I'm Jane Doe, call +1 415 555 0100 or pay DE89 3704 0044 0532 0130 00.")  # loads all
    redactor.redact("Hallo, ich heiße Anna Schneider, Hauptstraße 12.")
    load_s = time.perf_counter() - start

    rows = load_rows()
    splits = {split: [row for row in rows if row.split == split] for split in ("dev", "test")}
    quality = {
        split: {
            "messages": len(part),
            "without_pii": sum(not row.pii for row in part),
            "detected_language": _scores(redactor, part, given=False),
            "given_language": _scores(redactor, part, given=True),
        }
        for split, part in splits.items()
    }

    per_message_ms = []
    for _ in range(args.repeats):
        for row in rows:
            t = time.perf_counter()
            redactor.redact(row.text)
            per_message_ms.append((time.perf_counter() - t) * 1000)

    long_inputs = {}
    for name, text in _long_inputs(rows).items():
        seconds = _timed(redactor, text, args.repeats)
        long_inputs[name] = {
            "chars": len(text),
            "redact_s": round(seconds, 3),
            "share_of_2s_budget": round(seconds / BUDGET_S, 3),
        }

    report = {
        "cpu_threads": os.cpu_count(),
        "labels": list(ALL_PII),
        "model_load_s": round(load_s, 2),
        "quality": quality,
        "latency": {
            "messages": len(rows),
            "repeats": args.repeats,
            "p50_ms": round(statistics.median(per_message_ms), 2),
            "p99_ms": round(pct(per_message_ms, 0.99), 2),
            "max_ms": round(max(per_message_ms), 2),
        },
        "long_inputs": long_inputs,
        "spacy_tokenizer_raw_s": _raw_tokenizer_s(agent),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
