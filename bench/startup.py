"""Start-up: `import slm_router` and `slm-router --help` in a fresh process, against a bare interpreter.

    .venv/bin/python -m bench.startup            # 7 runs each, median and max
    .venv/bin/python -m bench.startup --smoke    # 2 runs each

The baseline is `python -c pass` in the same run: what any Python command costs here. Both commands must
stay fast (names resolve on first use), so a user's `--help` or a script that only imports the package
never waits for torch, scikit-learn or LangGraph. Writes bench/results/startup.json.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.section import section_main

RESULTS = Path(__file__).resolve().parent / "results"
COMMANDS = {
    "bare_python": [sys.executable, "-c", "pass"],
    "import_slm_router": [sys.executable, "-c", "import slm_router"],
    "import_router_and_policies": [sys.executable, "-c", "import slm_router.router, slm_router.policies"],
    "cli_help": [str(Path(sys.executable).with_name("slm-router")), "--help"],
    "cli_version": [str(Path(sys.executable).with_name("slm-router")), "--version"],
}


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def measure(data: Path | None, smoke: bool, threads: int = 2) -> dict[str, Any]:
    """`data` and `threads` are unused (the shared section options)."""
    runs = 2 if smoke else 7
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):  # interleaved, so a noisy moment hits every command alike
        for name, command in COMMANDS.items():
            times[name].append(_seconds(command))
    out: dict[str, Any] = {"runs": runs}
    bare = statistics.median(times["bare_python"])
    for name, values in times.items():
        median = statistics.median(values)
        out[name] = {"median_s": round(median, 3), "max_s": round(max(values), 3)}
        if name != "bare_python":
            out[name]["over_bare_python"] = round(median / bare, 2)
    return out


def main() -> None:
    section_main(measure, __doc__, RESULTS / "startup.json", "unused")


if __name__ == "__main__":
    main()
