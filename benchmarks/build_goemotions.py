"""GoEmotions (Demszky et al. 2020) as a text manifest with three multilabel heads.

RAW is a folder with the data set's own files (``goemotions/data/`` of
github.com/google-research/google-research): ``train.tsv``, ``dev.tsv``, ``test.tsv`` (text, a
comma-separated list of emotion ids, comment id; CSV-quoted), ``emotions.txt``,
``ekman_mapping.json`` and ``sentiment_mapping.json``. OUT gets ``train.csv``, ``val.csv`` (the
dev split) and ``test.csv`` with the columns ``text``, ``emotion`` (27 emotions and neutral),
``ekman`` (Ekman's six groups and neutral) and ``sentiment`` (positive, negative, ambiguous,
neutral), names joined by ``|``.

    python benchmarks/build_goemotions.py RAW OUT
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

EKMAN = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
SENTIMENT = ["positive", "negative", "ambiguous", "neutral"]


def groups(mapping_file: Path, order: list[str]) -> dict[str, str]:
    """emotion -> its group, neutral its own."""
    mapping = json.loads(mapping_file.read_text())
    found = {emotion: group for group, emotions in mapping.items() for emotion in emotions}
    found["neutral"] = "neutral"
    assert set(found.values()) <= set(order), mapping_file
    return found


def main(raw: Path, out: Path) -> None:
    emotions = (raw / "emotions.txt").read_text(encoding="utf-8").split()
    ekman = groups(raw / "ekman_mapping.json", EKMAN)
    sentiment = groups(raw / "sentiment_mapping.json", SENTIMENT)
    out.mkdir(parents=True, exist_ok=True)
    for source, split in (("train", "train"), ("dev", "val"), ("test", "test")):
        with open(raw / f"{source}.tsv", encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        with open(out / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "emotion", "ekman", "sentiment"])
            for text, ids, _ in rows:
                names = [emotions[i] for i in sorted({int(x) for x in ids.split(",")})]
                heads = [names, [g for g in EKMAN if g in {ekman[n] for n in names}],
                         [g for g in SENTIMENT if g in {sentiment[n] for n in names}]]
                writer.writerow([text, *("|".join(h) for h in heads)])
        print(f"{out / f'{split}.csv'}: {len(rows)} rows")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
