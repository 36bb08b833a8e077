"""Resident memory of a router process, and how many copies of each model it holds.

    .venv/bin/python bench/memory.py [--smoke] [--out bench/results/memory.json]

Each measurement runs in a fresh Python process (numbers from one process would carry the allocations of the
last), which reports its RSS after importing the router, after `Router.from_policy`, after `warmup()` (every
specialist, the language detector and the in-process fallback loaded), after the fallback's redactor has
read one English message with a name (its models load then: warmup's prompt names nobody) and after
traffic: about 400 CLINC150 train texts (40 with --smoke), 16 at a time, through the embedder, the
sentiment and extraction agents and the redactor. transformers maps safetensors files copy-on-write, so a
weight counts in RSS once its pages are touched: traffic is what makes every copy resident.

It also counts the models held: MiniLM copies (distinct word-embedding tensors: the router's encoder, the
sentiment model and the entity tagger each used to hold one), the bytes of all distinct torch tensors held
by modules, and spaCy pipelines. Child processes (the translation engine) are reported apart, in
`children_rss`.

The default policy is measured in both modes; without `--smoke` also a 151-route CLINC150 policy (the
routes of bench/route_head.py, built from /work/shared/data's train split; fallback disabled, as there).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
BATCH = 16


def _memory_mb() -> dict[str, float]:
    """This process's RSS and its child processes' summed RSS, in MiB. (USS and PSS would depend on what
    the other processes of the machine map, and the translation engine is a forked child.)"""
    import psutil

    me = psutil.Process()
    children = sum(child.memory_info().rss for child in me.children(recursive=True))
    return {"rss": round(me.memory_info().rss / MB, 1), "children_rss": round(children / MB, 1)}


def models_held() -> dict[str, Any]:
    """What the live torch modules and spaCy pipelines of this process add up to (shared tensors once)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        objects = gc.get_objects()
        modules = [o for o in objects if isinstance(o, torch.nn.Module)]
    storages: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    embeddings = {
        m.get_parameter("word_embeddings.weight").data_ptr()
        for m in modules
        if type(m).__name__ == "BertEmbeddings"
    }
    out: dict[str, Any] = {
        "minilm_copies": len(embeddings),
        "bert_models": sum(type(m).__name__ == "BertModel" for m in modules),
        "torch_tensor_mb": round(sum(storages.values()) / MB, 1),
    }
    if "spacy" in sys.modules:
        from spacy.language import Language

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out["spacy_pipelines"] = sum(isinstance(o, Language) for o in objects)
    return out


def _clinc_policy(data: Path) -> Any:
    sys.path.insert(0, str(ROOT))
    from bench.route_head import routes_policy

    by_route: dict[str, list[str]] = {}
    with (data / "clinc150_train.jsonl").open(encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            by_route.setdefault("other" if row["intent"] == "oos" else row["intent"], []).append(row["text"])
    return routes_policy(by_route, "linear")


def _traffic(data: Path | None, smoke: bool) -> list[str]:
    """CLINC150 train texts (development data), so the models touch the rows and pages real traffic does;
    without data, the packaged route examples."""
    if data is None:
        from slm_router.policies import load_policy
        from slm_router.router.core.index import load_utterances

        texts = [t for route in load_utterances(load_policy()).values() for t in route]
    else:
        with (data / "clinc150_train.jsonl").open(encoding="utf-8") as rows:
            texts = [json.loads(line)["text"] for line in rows]
    return texts[:: max(1, len(texts) // (40 if smoke else 400))]


def child(policy_name: str, smoke: bool, data: Path | None) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    from slm_router import Router
    from slm_router.agents.base import AgentInput

    out["after_import"] = _memory_mb()
    policy = _clinc_policy(data) if policy_name == "clinc150" and data is not None else None
    router = Router.from_policy(policy)
    out["after_build"] = _memory_mb()
    router.warmup()
    out["after_warmup"] = _memory_mb()
    redactor = router.fallback.redactor if router.fallback is not None else None
    if redactor is not None:
        # What the first escalated English request with a name loads (warmup's prompt names nobody).
        redactor.redact("Hi, I'm Jane Doe, write to jane@example.com.", "en")
        out["after_redaction"] = _memory_mb()
    texts = _traffic(data, smoke)
    for start in range(0, len(texts), BATCH):  # batches of the policy's default size, as traffic comes
        batch = texts[start : start + BATCH]
        router.embedder.encode(batch)
        for name in ("sentiment", "extract"):
            router.pool.run(name, [AgentInput(text=text, language="en") for text in batch])
        if redactor is not None:
            redactor.redact_batch(batch, ["en"] * len(batch))
    out["after_traffic"] = {"texts": len(texts), **_memory_mb()}
    out.update(models_held())
    router.close()
    return out


def _spawn(policy_name: str, smoke: bool, data: Path | None) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            policy_name,
            *(["--smoke"] if smoke else []),
            *(["--data", str(data)] if data is not None else []),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {policy_name!r} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(smoke: bool, data: Path | None = None) -> dict[str, Any]:
    """Memory in MiB per stage and the models held, one fresh process per policy (the CLINC150 one only
    with `data`, and not in a smoke run)."""
    policies = ["default"] if smoke or data is None else ["default", "clinc150"]
    return {"memory_mb": {name: _spawn(name, smoke, data) for name in policies}, "smoke": smoke}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="Only the default policy.")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    parser.add_argument("--data", type=Path, default=None, help="../shared/data: adds the CLINC150 policy")
    parser.add_argument(
        "--threads", type=int, default=1, help="accepted for `python -m bench`; memory is per process"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.smoke, args.data)))
        return
    result = measure(args.smoke, args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
