"""One benchmark run: every figure against a baseline measured in the same run, on this machine.

    .venv/bin/python -m bench --data ../shared/data     # the full run, under 10 minutes on 2 cores
    .venv/bin/python -m bench --smoke                   # every section, tiny sizes (the test suite runs it)
    .venv/bin/python -m bench --only speed,service      # some sections

Each section runs in a fresh process (clean memory figures, no thread settings carried over) with a time
limit, writes bench/results/<section>.json, and a failed section fails the run without stopping the
others. Then bench/results/summary.json and the summary table in bench/README.md (between the
`bench:summary` markers) are rewritten from those files, with the command and the machine. A smoke run
writes to a temporary folder and touches neither.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
START, END = "<!-- bench:summary:start -->", "<!-- bench:summary:end -->"


@dataclass(frozen=True)
class Section:
    module: str
    what: str
    timeout_s: int
    needs_data: bool = False
    extra: tuple[str, ...] = ()


SECTIONS = {
    "speed": Section(
        "bench.speed", "decision, invoke, batch, abatch vs the raw forward; routes; concurrency", 480
    ),
    "service": Section(
        "bench.service", "/v1/route and /v1/route/batch vs in-process and the raw forward", 240
    ),
    "vs_semantic_router": Section(
        "bench.vs_semantic_router", "slm-router vs semantic-router: latency, throughput, accuracy", 240, True
    ),
    "int8": Section("bench.int8", "the int8 ONNX encoder vs fp32: latency and routing accuracy", 180),
    "memory": Section("bench.memory", "resident memory: router, specialists, shared models", 180),
    "startup": Section("bench.startup", "import slm_router and slm-router --help in a fresh process", 120),
    "console": Section("bench.console", "the operator console's queries over 100k logged decisions", 180),
    "specialists": Section(
        "bench.specialists",
        "each specialist in-process and on Ray Serve vs the fallback",
        300,
        extra=("--agents",),
    ),
}


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "platform": platform.platform()}


def run_section(name: str, section: Section, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Run one section in its own process; its JSON, or why there is none."""
    if section.needs_data and args.data is None:
        return {"skipped": "needs --data"}
    out = out_dir / f"{name}.json"
    command = [sys.executable, "-m", section.module, *section.extra, "--out", str(out)]
    command += ["--threads", str(args.threads)]
    command += ["--data", str(args.data)] if args.data is not None else []
    command += ["--smoke"] if args.smoke else []
    start = time.monotonic()
    print(f"[{name}] {section.what}", flush=True)
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=section.timeout_s)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {section.timeout_s} s"}
    took = round(time.monotonic() - start, 1)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"failed": f"exit {proc.returncode} after {took} s", "log": tail}
    print(f"[{name}] done in {took} s", flush=True)
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return {"seconds": took, **report}


def _get(report: dict[str, Any], path: str) -> Any:
    node: Any = report
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


GOALS: list[tuple[str, str, str]] = [
    # (figure, section.path of the ratio, goal)
    ("decision p50 at batch 1 / raw forward", "speed.decision.decide_over_raw_p50", "<= 1.10"),
    ("decision p99 at batch 1 / raw forward", "speed.decision.decide_over_raw_p99", "-"),
    ("`invoke` p50 at batch 1 / raw forward", "speed.decision.invoke_over_raw_p50", "-"),
    (
        "`decide_many` throughput / raw (chunks of 64)",
        "speed.batched.decide_many_over_raw",
        ">= 0.9",
    ),
    ("`Router.batch` throughput / raw", "speed.batched.batch_over_raw", ">= 0.9"),
    ("`Router.abatch` throughput / raw", "speed.batched.abatch_over_raw", "-"),
    ("`invoke` one by one, throughput / raw", "speed.batched.invoke_each_over_raw", "-"),
    (
        "`/v1/route/batch` throughput / raw",
        "service.routing.batch.batch_endpoint_over_raw",
        ">= 0.8",
    ),
    (
        "`/v1/route` p50 / in-process `invoke` (routing)",
        "service.routing.single.http_over_invoke_p50",
        "<= 1.3",
    ),
    (
        "`/v1/route` p50 / in-process `invoke` (specialists)",
        "service.default.single.http_over_invoke_p50",
        "<= 1.3",
    ),
    (
        "console overview of 100k logged decisions, 24 h window, cold median (s)",
        "console.overview_24h.cold_median_s",
        "< 1",
    ),
    (
        "console overview of 100k logged decisions, 24 h window, cold max (s)",
        "console.overview_24h.cold_max_s",
        "< 1",
    ),
]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def goals_table(summary: dict[str, Any]) -> str:
    rows = ["| figure (same run, same encoder and threads) | measured | goal |", "|---|---:|---|"]
    for figure, path, goal in GOALS:
        section, _, rest = path.partition(".")
        rows.append(f"| {figure} | {_cell(_get(summary.get(section, {}), rest))} | {goal} |")
    rows += [f"| {figure} | {_cell(value)} | {goal} |" for figure, value, goal in extra_rows(summary)]
    return "\n".join(rows)


def extra_rows(summary: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Figures from sections whose shape is their own (semantic-router, int8, memory)."""
    vs = summary.get("vs_semantic_router", {})
    int8 = summary.get("int8", {})
    memory = summary.get("memory", {})
    warm = _get(memory, "memory_mb.default.after_warmup")
    startup = summary.get("startup", {})
    return [
        (
            "speed-up vs semantic-router 1.1.1, batch-1 p50",
            _get(vs, "ratios.latency_p50_speedup_slm_vs_semantic_router"),
            ">= 2",
        ),
        (
            "speed-up vs semantic-router, batched (its per-text loop)",
            _get(vs, "ratios.throughput_speedup_slm_vs_semantic_router_loop"),
            ">= 5",
        ),
        (
            "speed-up vs semantic-router, batched (its `evaluate`)",
            _get(vs, "ratios.throughput_speedup_slm_vs_semantic_router_evaluate"),
            "-",
        ),
        (
            "in-scope accuracy / OOS recall, CLINC150 val: slm-router",
            _pair(vs, "accuracy_clinc150_val.slm_router"),
            "-",
        ),
        (
            "in-scope accuracy / OOS recall, CLINC150 val: semantic-router",
            _pair(vs, "accuracy_clinc150_val.semantic_router"),
            "-",
        ),
        ("int8 encoder batch-1 p50 / fp32", _get(int8, "latency.int8_over_fp32.batch1_p50"), "<= 0.5"),
        (
            "int8 - fp32, points: top route right (linear head, CLINC150 val)",
            _get(int8, "clinc150_val.int8_minus_fp32_linear_points.top_route_right"),
            ">= -0.5",
        ),
        (
            "int8 - fp32, points: in-scope accuracy",
            _get(int8, "clinc150_val.int8_minus_fp32_linear_points.in_scope_accuracy"),
            ">= -0.5",
        ),
        (
            "resident memory, default router after warm-up (MB, + translator child)",
            None if warm is None else f"{warm['rss']:g} + {warm['children_rss']:g}",
            "reported",
        ),
        ("`import slm_router`, fresh process (s)", _get(startup, "import_slm_router.median_s"), "< 1"),
        ("`slm-router --help`, fresh process (s)", _get(startup, "cli_help.median_s"), "< 1"),
    ]


def _pair(report: dict[str, Any], path: str) -> str | None:
    found = _get(report, path)
    return None if found is None else f"{found['in_scope_accuracy']:g} / {found['oos_recall']:g}"


def write_summary(
    summary: dict[str, Any], command: str, results: Path = RESULTS, readme: Path = README
) -> None:
    """summary.json, and the table between the markers of bench/README.md (appended once if absent)."""
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    meta = summary["_run"]
    block = "\n".join(
        [
            START,
            f"Command: `{command}`, {meta['date']}, {meta['machine']['cpu']}, "
            f"{meta['machine']['cores']} cores, "
            f"torch threads {meta['threads']}; sections: "
            + ", ".join(f"{k} {v}" for k, v in meta["sections"].items())
            + ".",
            "",
            goals_table(summary),
            END,
        ]
    )
    text = readme.read_text(encoding="utf-8")
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Summary (`python -m bench`)\n\n" + block + "\n"
    readme.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="public development data (../shared/data)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, results to a temporary folder")
    parser.add_argument("--only", default="", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every section (default 2)")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.data is not None and not (args.data / "clinc150_val.jsonl").is_file():
        parser.error(f"--data {args.data}: no clinc150_val.jsonl there")

    with tempfile.TemporaryDirectory(prefix="slm-bench-") as tmp:
        out_dir = Path(tmp) if args.smoke else RESULTS
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {name: run_section(name, SECTIONS[name], args, out_dir) for name in chosen}
    states = {
        name: "failed" if "failed" in r else "skipped" if "skipped" in r else "ok"
        for name, r in summary.items()
    }
    for name, report in summary.items():
        if "failed" in report:
            print(
                f"[{name}] FAILED: {report['failed']}\n  " + "\n  ".join(report.get("log", [])),
                file=sys.stderr,
            )
    print(goals_table(summary))
    if not args.smoke:
        # A run of some sections (--only) replaces just those in the summary the last full run wrote.
        path = RESULTS / "summary.json"
        merged = json.loads(path.read_text(encoding="utf-8")) if args.only and path.is_file() else {}
        meta = merged.get("_run", {})
        today = time.strftime("%Y-%m-%d")
        commands = {
            **meta.get("commands", {}),
            **{name: "python -m bench " + shlex.join(sys.argv[1:]) for name in chosen},
        }
        merged.update(summary)
        merged["_run"] = {
            "date": today,
            "machine": machine(),
            "threads": args.threads,
            "sections": {
                **meta.get("sections", {}),
                **{name: f"{state} {today}" for name, state in states.items()},
            },
            "commands": commands,
        }
        write_summary(merged, "; ".join(sorted(set(commands.values()))))
    sys.exit(1 if "failed" in states.values() else 0)


if __name__ == "__main__":
    main()
