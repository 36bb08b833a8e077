"""Load at twice the measured capacity on a real `slm-router serve`: every request gets exactly one answer.

The default run is short (8 s of overload; `make test-ray` the same on Ray); `make test-load` runs the
acceptance lengths (60 s local, 30 s on Ray). The driver is bench/load.py, which also writes the figures
reported in the README.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _driver() -> Any:
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(report: dict[str, Any]) -> None:
    assert report["every_request_one_outcome"], report
    # The outcome counts name the kind of loss (lost_timeout, lost_ConnectError, ...) where pytest cuts the
    # whole report short.
    assert report["lost"] == 0 and report["mismatched"] == 0, (report["outcomes"], report)
    assert report["refused"] > 0 and report["refused_without_retry_after"] == 0, report
    assert set(report["outcomes"]) <= {"200", "429", "503"}, report
    # Bounded, not fast: a slot within server.queue_timeout_s (2 s), then the request itself.
    assert report["accepted_p99_ms"] < 15_000, report


def test_twice_capacity_briefly_loses_nothing() -> None:
    _check(_driver().run("local", seconds=8, capacity_s=4, factor=2.0, fallback_ms=300, timeout=30))


@pytest.mark.ray
def test_twice_capacity_briefly_on_ray_loses_nothing() -> None:
    _check(_driver().run("ray", seconds=8, capacity_s=4, factor=2.0, fallback_ms=300, timeout=30))


@pytest.mark.slow
def test_twice_capacity_for_a_minute_loses_nothing() -> None:
    _check(_driver().run("local", seconds=60, capacity_s=10, factor=2.0, fallback_ms=300, timeout=60))


@pytest.mark.slow
@pytest.mark.ray
def test_twice_capacity_on_ray_loses_nothing() -> None:
    _check(_driver().run("ray", seconds=30, capacity_s=10, factor=2.0, fallback_ms=300, timeout=60))
