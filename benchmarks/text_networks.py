"""Text networks from scratch on one head of a text manifest: mhc's text CNN, its bag of token
embeddings (``bag``: learned weights; ``mean``: the weights frozen at 1) and both joined, against
TF-IDF with logistic regression, scored on the validation split. What chose ``experiment=auto``'s
network for documents (docs/recipes.md).

Only the rows labelled for ``--task`` are used; the WordPiece vocabulary is fitted on every
training text (min count 2), as ``experiment=auto`` fits it. AdamW with 5% warm-up then cosine
decay, batch 32, gradient clipping at 1, one thread. The folder is the 4,000-row sample that
``benchmarks/recipes.py --data newsgroups_emotion=... --sizes 4000`` writes::

    python benchmarks/text_networks.py outputs/recipes/newsgroups_emotion-4000/data --task topic \\
        --network bag --ids 16384 --length 256 --lr 5e-3
    python benchmarks/text_networks.py outputs/recipes/newsgroups_emotion-4000/data --task topic --tfidf
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mhc.model.backbones.bag import TokenBag
from mhc.model.backbones.textcnn import TextCNN
from mhc.processing.tokenizer import fit_wordpiece

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tfidf_baseline import read, vectorizer  # noqa: E402


class Joined(nn.Module):
    """The text CNN's and the bag's features side by side."""

    def __init__(self, cnn: TextCNN, bag: TokenBag) -> None:
        super().__init__()
        self.cnn, self.bag = cnn, bag
        self.num_features = cnn.num_features + bag.num_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cnn(ids), self.bag(ids)], dim=-1)


def backbone(name: str, ids: int, length: int, dim: int) -> nn.Module:
    cnn = lambda: TextCNN(vocab_size=ids, max_length=length, dim=dim, filters=128, dropout=0.5)  # noqa: E731
    bag = lambda: TokenBag(vocab_size=ids, max_length=length, dim=dim)  # noqa: E731
    if name == "cnn":
        return cnn()
    if name == "joined":
        return Joined(cnn(), bag())
    network = bag()
    network.log_weight.weight.requires_grad_(name == "bag")  # mean: every token weighs 1
    return network


def tfidf(train: pd.DataFrame, val: pd.DataFrame, task: str) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    words = vectorizer()
    x, x_val = words.fit_transform(train.text), words.transform(val.text)
    return {f"C={c}": LogisticRegression(C=c, max_iter=2000).fit(x, train[task]).score(x_val, val[task])
            for c in (1, 4, 16, 64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a manifest folder: train.csv and val.csv with a text column")
    parser.add_argument("--task", required=True)
    parser.add_argument("--network", choices=["cnn", "bag", "mean", "joined"], default="bag")
    parser.add_argument("--tfidf", action="store_true", help="TF-IDF and logistic regression instead")
    parser.add_argument("--ids", type=int, default=16384, help="WordPiece vocabulary size")
    parser.add_argument("--length", type=int, default=256, help="tokens kept of each text")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    texts, val = read(args.folder, "train"), read(args.folder, "val")
    train, val = texts[texts[args.task] != ""], val[val[args.task] != ""]
    classes = sorted(set(train[args.task]))
    val = val[val[args.task].isin(classes)]
    if args.tfidf:
        print(json.dumps({"task": args.task, "tfidf": tfidf(train, val, args.task)}))
        return
    tokenizer = fit_wordpiece(texts.text, min_count=2, max_size=args.ids)
    x, x_val = tokenizer.encode(list(train.text), args.length), tokenizer.encode(list(val.text), args.length)
    y = torch.tensor([classes.index(c) for c in train[args.task]])
    y_val = torch.tensor([classes.index(c) for c in val[args.task]])
    torch.manual_seed(0)
    features = backbone(args.network, tokenizer.vocab_size, args.length, args.dim)
    net = nn.Sequential(features, nn.Linear(features.num_features, len(classes)))
    parameters = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    began, step = time.perf_counter(), 0
    while step < args.steps:
        net.train()
        for rows in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(net(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step == args.steps:
                break
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(part).argmax(1) for part in x_val.split(256)])
    print(json.dumps({**{k: v for k, v in vars(args).items() if k != "folder"}, "folder": str(args.folder),
                      "val_acc": round((predicted == y_val).float().mean().item(), 4),
                      "seconds": round(time.perf_counter() - began)}))


if __name__ == "__main__":
    main()
