"""The linear baseline a text recipe must beat: TF-IDF with logistic regression, per head.

Reads a text manifest's train, val and test CSVs (a ``text`` column and one column per task;
a ``|`` in a task's training cells makes it multilabel, else it is multiclass; empty cells are
missing labels and are left out). Words and bigrams, sublinear TF, ``min_df=2``, fitted on the
training texts; per head a logistic regression (one-vs-rest for multilabel) with C chosen from
{0.5, 1, 2, 4, 8, 16, 32} by validation macro-F1 (for a multilabel head together with its threshold). Prints each head's test macro-F1 (multilabel at the
0.5 threshold, and at one threshold per head tuned on validation over 0.05..0.95), and seconds.
``run(data)`` returns the same as a dict (``benchmarks/recipes.py`` calls it).

    python benchmarks/tfidf_baseline.py --data /data/goemotions
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.multiclass import OneVsRestClassifier

CS = (0.5, 1, 2, 4, 8, 16, 32)
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


def read(data: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(data / f"{split}.csv", keep_default_na=False, dtype=str)


def targets(column: pd.Series, classes: list[str], multilabel: bool) -> np.ndarray:
    if multilabel:
        index = {c: i for i, c in enumerate(classes)}
        y = np.zeros((len(column), len(classes)), dtype=np.int8)
        for row, cell in enumerate(column):
            for name in filter(None, cell.split("|")):
                y[row, index[name]] = 1
        return y
    return np.array([classes.index(cell) for cell in column])


def macro_f1(y: np.ndarray, scores: np.ndarray, multilabel: bool, threshold: float = 0.5) -> float:
    predicted = (scores >= threshold).astype(np.int8) if multilabel else scores.argmax(1)
    return float(f1_score(y, predicted, average="macro", zero_division=0))


def vectorizer() -> TfidfVectorizer:
    """Words and bigrams, sublinear TF, each in at least two training texts."""
    return TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)


def run(data: Path) -> dict:
    """Per head: test macro-F1 (``f1``: multilabel at the threshold tuned on validation; ``f1_at_05``
    at 0.5), accuracy of multiclass heads, the C chosen; and the seconds taken."""
    start = time.perf_counter()
    train, val, test = (read(data, s) for s in ("train", "val", "test"))
    words = vectorizer().fit(train["text"])
    results = {}
    for task in [c for c in train.columns if c != "text" and not c.endswith("__allowed")]:
        multilabel = train[task].str.contains("|", regex=False).any()
        cells = {name: frame[frame[task] != ""] for name, frame in (("train", train), ("val", val), ("test", test))}
        classes = sorted({n for cell in cells["train"][task] for n in (cell.split("|") if multilabel else [cell]) if n})
        x = {name: words.transform(frame["text"]) for name, frame in cells.items()}
        y = {name: targets(frame[task], classes, multilabel) for name, frame in cells.items()}
        best = None
        for c in CS:  # C (and a multilabel head's threshold) chosen together on validation
            model = LogisticRegression(C=c, solver="liblinear" if multilabel else "lbfgs", max_iter=1000)
            model = (OneVsRestClassifier(model) if multilabel else model).fit(x["train"], y["train"])
            val_scores = model.predict_proba(x["val"])
            for threshold in THRESHOLDS if multilabel else [0.5]:
                score = macro_f1(y["val"], val_scores, multilabel, threshold)
                if best is None or score > best[0]:
                    best = (score, c, float(threshold), model)
        _, c, threshold, model = best
        test_scores = model.predict_proba(x["test"])
        results[task] = {"C": c, "f1_at_05": round(macro_f1(y["test"], test_scores, multilabel), 4)}
        if multilabel:
            results[task].update(threshold=threshold, f1=round(macro_f1(y["test"], test_scores, True, threshold), 4))
        else:
            results[task].update(f1=results[task]["f1_at_05"],
                                 acc=round(float((test_scores.argmax(1) == y["test"]).mean()), 4))
    return {"heads": results, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with train.csv, val.csv, test.csv")
    args = parser.parse_args()
    print(json.dumps(run(args.data), indent=2))


if __name__ == "__main__":
    main()
