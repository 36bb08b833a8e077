"""bench/specialists.py runs: its smoke version (a few calls per specialist, real models) gives every figure
the README table needs, and the strace reading behind "size on disk" keeps only the files loaded after the
marker, less code and metadata. The figures themselves are measured by the script, not asserted here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_specialists", ROOT / "bench" / "specialists.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_measures_every_specialist(bench: Any, tmp_path: Path) -> None:
    report = bench.run(data=tmp_path / "absent", smoke=True)  # no data folder: the packaged support texts
    assert set(report["specialists"]) == {"sentiment", "extract", "translate"}
    assert report["baseline"]["batch1_p50_ms"] > 0 and report["machine"]["torch_threads"] == 2
    for name, result in report["specialists"].items():
        assert "support_sentiment.jsonl" in result["texts"], name
        assert result["declined"] == 0, name  # en->pt is a packaged pair; every text is in scope
        assert result["load_s"] >= result["first_predict_s"] > 0, name
        assert result["batch1_p99_ms"] >= result["batch1_p50_ms"] > 0, name
        assert result["batched_texts_per_s"] > 0 and result["batch1_p50_vs_raw_encoder"] > 0, name
    table = bench.markdown(report).splitlines()
    assert len(table) == 2 + 4 and table[-1].startswith("| raw MiniLM forward (baseline) |")


def test_take_never_repeats_a_text(bench: Any) -> None:
    texts = bench.take(["a", "b"], 5)
    assert texts == ["a", "b", "a (1)", "b (1)", "a (2)"] and len(set(texts)) == 5


def test_size_counts_model_files_opened_after_the_marker(bench: Any, tmp_path: Path) -> None:
    marker, weights, config = tmp_path / "marker", tmp_path / "model.bin", tmp_path / "early.json"
    for path in (marker, weights, config, tmp_path / "agent.py"):
        path.write_text("x")
    lines = [
        f'4711 1700000000.000100 openat(AT_FDCWD, "{config}", O_RDONLY|O_CLOEXEC) = 3',
        f'4711 1700000000.000200 openat(AT_FDCWD, "{marker}", O_RDONLY|O_CLOEXEC) = 3',
        f'4712 1700000000.000300 openat(AT_FDCWD, "{weights}", O_RDONLY <unfinished ...>',
        "4711 1700000000.000350 <... openat resumed>) = 4",
        f'4711 1700000000.000400 open("{weights}", O_RDONLY) = 5',
        f'4711 1700000000.000500 openat(AT_FDCWD, "{tmp_path / "agent.py"}", O_RDONLY) = 6',
    ]
    opened = bench.opened_after_marker(lines, marker)
    assert opened == [str(weights), str(tmp_path / "agent.py")]  # in order, once each; not before the marker
    assert [p for p in opened if bench.is_model_file(p)] == [str(weights)]  # code is not model size
    assert not bench.is_model_file(str(weights), exclude=[tmp_path])
    with pytest.raises(RuntimeError, match="never opened the marker"):
        bench.opened_after_marker(lines[:1], marker)
