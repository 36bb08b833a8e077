"""The benchmark entry point (`python -m bench`): its smoke run measures every section end to end (real
models and a real server, tiny sizes, no data set needed) so the benchmark never rots. The figures are
checked for shape only: speed is measured in bench/, never asserted in tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.__main__ import GOALS, write_summary

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_of_every_section() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    table = proc.stdout[proc.stdout.index("| figure") :]
    for figure, *_ in GOALS:
        assert figure in table
    measured = [line.split("|")[2].strip() for line in table.splitlines()[2:] if line.startswith("|")]
    assert sum(value != "-" for value in measured) >= 8, table  # no data: semantic-router is skipped


def test_summary_table_replaces_its_own_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n", encoding="utf-8")
    summary = {
        "speed": {"decision": {"decide_over_raw_p50": 1.05}},
        "_run": {
            "date": "2026-12-06",
            "machine": {"cpu": "x", "cores": 2},
            "threads": 2,
            "sections": {"speed": "ok"},
        },
    }
    write_summary(summary, "python -m bench", results=tmp_path, readme=readme)
    write_summary(summary, "python -m bench", results=tmp_path, readme=readme)
    text = readme.read_text(encoding="utf-8")
    assert text.count("bench:summary:start") == 1 and text.startswith("# Benchmarks\n\nintro")
    assert "| decision p50 at batch 1 / raw forward | 1.05 | <= 1.10 |" in text
    assert (
        json.loads((tmp_path / "summary.json").read_text())["speed"]["decision"]["decide_over_raw_p50"]
        == 1.05
    )
