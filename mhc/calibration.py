"""Calibrated probabilities and decision thresholds per head, fitted on labelled validation outputs.

* **Temperature scaling** (Guo et al. 2017): a multiclass head's logits are divided by one
  temperature before the softmax over its allowed classes, a binary or multilabel head's by one
  temperature per output before the sigmoid. Each is fitted by minimising the negative
  log-likelihood of the labelled samples (label masks honoured, output masks applied as the
  decoder applies them) over ``log T`` with L-BFGS, so that ``T`` stays positive. The argmax
  of a multiclass head never changes, nor does a sigmoid's 0.5 point: thresholds move decisions.
* **Thresholds per class** for binary and multilabel heads: a class is predicted where its
  probability is at least its threshold, chosen on validation for an objective: ``f1`` (the
  class's F1), ``precision@P`` (the most recall at a precision of at least ``P``), ``recall@R``
  (the most precision at a recall of at least ``R``) or ``fixed:T``.
* **Expected calibration error** (torchmetrics' ``calibration_error``: 15 bins, L1) and the
  **Brier score** per head, to report before and after.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mhc.errors import ConfigError
from mhc.masks import apply_output_mask
from mhc.tasks import TaskSpec, threshold_objective

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # outside it a temperature says more about the split than the model


def fit_temperature(task: TaskSpec, logits: Tensor, targets: Tensor, label_mask: Tensor,
                    allowed: Tensor | None = None, max_iter: int = 100) -> list[float]:
    """The temperature(s) of ``task`` minimising the NLL of its labelled samples: one value for a
    multiclass head, one per output for a binary or multilabel head. An output whose labelled
    targets are all one value (nothing to calibrate against), or a head with no labelled
    sample, keeps 1."""
    keep = label_mask.bool()
    width = 1 if task.kind != "multilabel" else task.num_classes
    if not bool(keep.any()):
        return [1.0] * width
    z = logits.detach().float()[keep]
    y = targets[keep]
    if task.kind == "multiclass":
        mask = None if allowed is None else allowed[keep]
        log_t = torch.zeros(1, requires_grad=True)

        def nll() -> Tensor:
            return F.cross_entropy(apply_output_mask(z / log_t.exp(), mask), y.long())
    else:
        z, y = z.reshape(len(z), -1), y.reshape(len(y), -1).float()
        log_t = torch.zeros(width, requires_grad=True)

        def nll() -> Tensor:  # the outputs' NLLs summed: each temperature fitted on its own output
            return F.binary_cross_entropy_with_logits(z / log_t.exp(), y, reduction="none").mean(0).sum()

    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    fitted = log_t.detach().exp().clamp(low, high)
    if task.kind != "multiclass":
        positives = y.sum(0)
        fitted = torch.where((positives == 0) | (positives == len(y)), torch.ones_like(fitted), fitted)
    return [float(t) for t in fitted]


def best_threshold(probs: Tensor, targets: Tensor, objective: str) -> float:
    """The threshold on ``probs`` [N] (predict where ``p >= t``) that best meets ``objective`` for
    the 0/1 ``targets`` [N]. Every distinct probability is a candidate. ``precision@P`` that no
    threshold reaches falls back to the most precise threshold; with no positive target the
    threshold is 0.5."""
    kind, value = threshold_objective(objective)
    if kind == "fixed":
        return value
    positives = float(targets.sum())
    if positives == 0 or len(probs) == 0:
        return 0.5
    order = torch.argsort(probs.double(), descending=True)
    scores, hits = probs.double()[order], targets.double()[order]
    last_of_tie = torch.ones_like(scores, dtype=torch.bool)
    last_of_tie[:-1] = scores[:-1] != scores[1:]  # a cut-off predicts every sample tied with it
    tp = torch.cumsum(hits, 0)[last_of_tie]
    predicted = (torch.nonzero(last_of_tie).flatten() + 1).double()
    cutoffs = scores[last_of_tie]
    precision, recall = tp / predicted, tp / positives
    if kind == "f1":
        choice = int(torch.argmax(2 * tp / (predicted + positives)))
    elif kind == "precision":
        reached = torch.nonzero(precision >= value).flatten()
        choice = int(reached[-1]) if len(reached) else int(torch.argmax(precision))  # the last: the most recall
    else:
        choice = int(torch.nonzero(recall >= value).flatten()[0])  # the first: the highest threshold
    return float(cutoffs[choice])


def tune_thresholds(task: TaskSpec, probs: Tensor, targets: Tensor, label_mask: Tensor, objective: str) -> list[float]:
    """One threshold per output of a binary or multilabel ``task`` (:func:`best_threshold` over
    its labelled samples)."""
    if task.kind == "multiclass":
        raise ConfigError(f"task '{task.name}': thresholds apply to binary and multilabel tasks; a multiclass head "
                          "predicts its most probable class")
    keep = label_mask.bool()
    p = probs.detach().float()[keep].reshape(int(keep.sum()), -1)
    y = targets[keep].reshape(len(p), -1)
    return [best_threshold(p[:, c], y[:, c], objective) for c in range(task.num_outputs)]


def calibration_scores(task: TaskSpec, probs: Tensor, targets: Tensor, label_mask: Tensor) -> Mapping[str, float]:
    """``ece`` (expected calibration error) and ``brier`` of ``task``'s probabilities over its
    labelled samples. Multiclass: the top-label ECE and ``mean sum_c (p_c - [y = c])^2``; binary:
    both of P(positive); multilabel: each output's, averaged over the outputs."""
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    keep = label_mask.bool()
    if not bool(keep.any()):
        return {"ece": float("nan"), "brier": float("nan")}
    p = probs.detach().float()[keep]
    y = targets[keep]
    if task.kind == "multiclass":
        ece = multiclass_calibration_error(p, y.long(), num_classes=task.num_classes, n_bins=BINS, norm="l1")
        brier = (p - F.one_hot(y.long(), task.num_classes).float()).pow(2).sum(-1).mean()
        return {"ece": float(ece), "brier": float(brier)}
    p, y = p.reshape(len(p), -1), y.reshape(len(p), -1).float()
    ece = torch.stack([binary_calibration_error(p[:, c].contiguous(), y[:, c].long(), n_bins=BINS, norm="l1")
                       for c in range(p.shape[1])]).mean()
    return {"ece": float(ece), "brier": float((p - y).pow(2).mean())}
