"""20 Newsgroups topics (Lang 1995) and tweet emotions (Saravia et al. 2018) as one text manifest with masked heads.

NEWSGROUPS is a git directory holding the "bydate" 20 Newsgroups posts as
``20news-bydate-{train,test}/GROUP/ID`` under any folder (11,314 and 7,532 posts): for instance a
snapshot of github.com/julenminer/mlnn_P65 (``data/``). EMOTION is a git directory holding
dair-ai's emotion tweets as ``train.txt``, ``val.txt``, ``test.txt`` (``text;label`` lines, six
emotions; 16,000/2,000/2,000) in the folder ``--emotion-dir``: for instance a snapshot of
github.com/niuzaisheng/AttExplainer (``data/emotion/``). OUT gets ``train.csv``, ``val.csv`` and
``test.csv`` with the columns ``text``, ``topic`` (the 20 newsgroups), ``group`` (comp, rec, sci,
forsale, politics, religion: the groups' usual partition) and ``emotion`` (sadness, joy, love,
anger, fear, surprise). A post leaves ``emotion`` empty and a tweet ``topic`` and ``group``: each
row has the labels of its own source only.

A post's text is its subject and body, without the other headers (the ``Newsgroups:`` header
names the label) and the quoted lines, each run of whitespace or control characters made one
space, cut to ``--max-chars``. Each source keeps its test split; the posts' val split is a seeded
tenth of their training split. Texts are kept once, in the first of test, val, train that holds
them, and left out where their copies disagree on the label.

    python benchmarks/build_newsgroups_emotion.py NEWSGROUPS EMOTION OUT
"""

from __future__ import annotations

import argparse
import collections
import csv
import random
import re
import subprocess
from pathlib import Path

from build_faces import blobs, tree

POST = re.compile(r"(?:^|/)20news-bydate-(train|test)/([^/]+)/\d+$")
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and line feed: backspaces, escapes, ...
QUOTE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")
EMOTIONS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
COLUMNS = ["text", "topic", "group", "emotion"]
SPLITS = ("test", "val", "train")


def git(mirror: str, *command: str) -> bytes:
    return subprocess.run(["git", "--git-dir", mirror, *command], check=True, capture_output=True).stdout


def group(topic: str) -> str:
    if topic in ("alt.atheism", "soc.religion.christian", "talk.religion.misc"):
        return "religion"
    return {"misc": "forsale", "talk": "politics"}.get(topic.split(".")[0], topic.split(".")[0])


def post(raw: str, max_chars: int) -> str:
    """Subject and body of a post, without the other headers and the quoted lines."""
    head, _, body = CONTROL.sub(" ", raw).partition("\n\n")
    subject = [line[len("Subject:"):] for line in head.splitlines() if line.startswith("Subject:")]
    text = " ".join(" ".join(subject[:1] + [line for line in body.splitlines() if not QUOTE.search(line)]).split())
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0]


def newsgroups(mirror: str, max_chars: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    files = [(blob, *match.groups()) for path, blob in tree(mirror) if (match := POST.search(path))]  # (blob id, split, newsgroup)
    found: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for (_, split, topic), data in zip(files, blobs(mirror, [file[0] for file in files])):
        found[split].append((post(data.decode("latin-1"), max_chars), topic))
    train = sorted(found["train"])
    random.Random(seed).shuffle(train)
    tenth = len(train) // 10
    return {"test": sorted(found["test"]), "val": train[:tenth], "train": train[tenth:]}


def emotions(mirror: str, folder: str) -> dict[str, list[tuple[str, str]]]:
    splits = {}
    for split in SPLITS:
        lines = git(mirror, "show", f"HEAD:{folder}/{split}.txt").decode("utf-8").splitlines()
        rows = [tuple(line.rsplit(";", 1)) for line in lines if line.strip()]
        rows = rows[1:] if rows[0][1] not in EMOTIONS else rows  # a header line
        assert all(len(r) == 2 and r[1] in EMOTIONS for r in rows), f"{folder}/{split}.txt"
        splits[split] = rows
    return splits


def distinct(name: str, splits: dict[str, list[tuple[str, str]]]) -> dict[str, list[tuple[str, str]]]:
    """Each text once, in the first of test, val, train; texts whose copies disagree left out."""
    labels = collections.defaultdict(set)
    for text, label in (row for part in splits.values() for row in part):
        labels[text].add(label)
    seen, kept = {""}, {}
    for split in SPLITS:
        kept[split] = []
        for text, label in splits[split]:
            if len(labels[text]) == 1 and text not in seen:
                seen.add(text)
                kept[split].append((text, label))
    total = sum(map(len, splits.values()))
    print(f"{name}: {total} rows, {total - sum(map(len, kept.values()))} left out (empty, repeated or disagreeing), "
          + ", ".join(f"{split} {len(part)}" for split, part in kept.items()))
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("newsgroups")
    parser.add_argument("emotion")
    parser.add_argument("out", type=Path)
    parser.add_argument("--emotion-dir", default="data/emotion")
    parser.add_argument("--max-chars", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    posts = distinct("20 Newsgroups", newsgroups(args.newsgroups, args.max_chars, args.seed))
    tweets = distinct("emotion", emotions(args.emotion, args.emotion_dir))
    args.out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        rows = [[text, topic, group(topic), ""] for text, topic in posts[split]]
        rows += [[text, "", "", emotion] for text, emotion in tweets[split]]
        random.Random(args.seed).shuffle(rows)
        with open(args.out / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(rows)
        print(f"{args.out / f'{split}.csv'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
