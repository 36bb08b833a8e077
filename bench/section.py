"""The command line every `python -m bench` section shares: --data, --smoke, --threads, --out."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Measure = Callable[[Path | None, bool, int], dict[str, Any]]


def section_main(measure: Measure, doc: str | None, out: Path, data_help: str) -> None:
    """Parse the shared options, run `measure(data, smoke, threads)`, write its JSON to --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help=data_help)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch (and onnxruntime) threads")
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args()
    report = measure(args.data, args.smoke, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
