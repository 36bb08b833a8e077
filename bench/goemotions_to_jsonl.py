"""GoEmotions "group" taxonomy TSV (text, label ids, comment id) -> sentiment JSONL for `slm-router train`.

Label ids follow the taxonomy's labels.txt: 0 ambiguous, 1 negative, 2 neutral, 3 positive. Rows with more
than one label or the ambiguous one are dropped: the sentiment model has three classes.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

GROUP_LABELS = ("ambiguous", "negative", "neutral", "positive")


def convert(source: Path, target: Path) -> Counter[str]:
    kept: Counter[str] = Counter()
    with source.open(encoding="utf-8", newline="") as fh, target.open("w", encoding="utf-8") as out:
        for text, ids, comment_id in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            labels = {GROUP_LABELS[int(i)] for i in ids.split(",")}
            if len(labels) != 1 or labels == {"ambiguous"}:
                continue
            (label,) = labels
            out.write(json.dumps({"id": comment_id, "text": text, "label": label}, ensure_ascii=False) + "\n")
            kept[label] += 1
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    print(dict(convert(args.source, args.target)))


if __name__ == "__main__":
    main()
