"""The network: a shared backbone feeding one classification head per task.

Plain PyTorch, no Lightning: ``MultiHeadNet(images) -> {task: logits}`` (or token ids [B, L]
for a token backbone). The net carries its preprocessing (input size, mean, std, and for text
its tokenizer) and its tasks, so a checkpoint describes itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mhc.errors import DataError
from mhc.masks import apply_output_mask, hierarchy_matrix
from mhc.model.backbones import create_backbone
from mhc.model.backbones.base import ATTENTION, HEAD_PRUNING, TOKENS
from mhc.model.backbones.registry import LOAD_TIME_OPTIONS, describe_backbone
from mhc.model.heads import ClassificationHead, fused_head_logits
from mhc.processing.images import to_batch
from mhc.processing.tokenizer import Tokenizer, tokenizer_from_dict
from mhc.tasks import TaskSpec, tasks_from_dicts, tasks_to_dicts


@dataclass
class TaskPrediction:
    """One task's predictions for a batch: class names and probabilities [B, C] in ``classes`` order.

    ``labels`` holds one class name per sample, or a list of names per sample for multilabel.
    """

    classes: list[str]
    labels: list[Any]
    probs: Tensor


def decode_predictions(
    tasks: Iterable[TaskSpec], probs: Mapping[str, Tensor], threshold: float = 0.5
) -> dict[str, TaskPrediction]:
    """Class names from :meth:`MultiHeadNet.probabilities` output; binary becomes [B, 2]."""
    out: dict[str, TaskPrediction] = {}
    for task in tasks:
        p = probs[task.name]
        if task.kind == "binary":
            p = torch.stack([1 - p, p], dim=-1)
        if task.kind == "multilabel":
            labels: list[Any] = [[task.classes[j] for j in torch.nonzero(row >= threshold).flatten().tolist()] for row in p]
        else:
            labels = [task.classes[j] for j in p.argmax(-1).tolist()]
        out[task.name] = TaskPrediction(classes=list(task.classes), labels=labels, probs=p)
    return out


@dataclass
class Preprocess:
    """How raw inputs become network input.

    Images: resize to ``image_size`` [H, W], scale to [0, 1], normalise with ``mean``/``std``.
    Text: ``tokenizer`` (:meth:`mhc.processing.tokenizer.Tokenizer.to_dict` data) encodes to ids
    padded to ``image_size[-1]`` tokens (``image_size`` is ``[1, max_length]``).
    """

    image_size: list[int] = field(default_factory=lambda: [64, 64])  # [H, W], or [1, max_length]
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    tokenizer: dict[str, Any] | None = None  # plain data, so checkpoints and exports carry it


class MultiHeadNet(nn.Module):
    """Shared backbone + per-task heads; forward returns raw logits per task.

    Args:
        backbone: backbone options, ``{"name": "resnet18", ...}`` (see ``create_backbone``).
        tasks: the tasks, in the order heads are evaluated.
        preprocess: input size and normalisation; applied inside ``forward`` so exported
            models take images scaled to [0, 1].
    """

    # Speed options (mhc.training.speed): single-linear heads share one matmul; NHWC image input.
    fuse_heads: bool = True
    channels_last: bool = False

    def __init__(self, backbone: Mapping[str, Any], tasks: Sequence[TaskSpec], preprocess: Preprocess | None = None) -> None:
        super().__init__()
        self.backbone_config = dict(backbone)
        self.tasks = {t.name: t for t in tasks}
        self.preprocess = preprocess or Preprocess()
        tokenizer = self.preprocess.tokenizer
        self.tokenizer: Tokenizer | None = None if tokenizer is None else tokenizer_from_dict(tokenizer)
        self.backbone = create_backbone(**self.backbone_config)
        dim = self.backbone.num_features
        self.heads = nn.ModuleDict(
            {t.name: ClassificationHead(dim, t.num_outputs, t.hidden, t.dropout) for t in tasks}
        )
        self.register_buffer("mean", torch.tensor(self.preprocess.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.preprocess.std).view(1, -1, 1, 1), persistent=False)
        for t in tasks:
            if t.parent is not None:
                matrix = hierarchy_matrix(t, self.tasks[t.parent])
                self.register_buffer(f"allowed_{t.name}", matrix, persistent=False)

    @property
    def modality(self) -> str:
        """What the backbone reads: ``image`` or ``tokens`` (its declared modality)."""
        return self.backbone.modality

    @property
    def takes_tokens(self) -> bool:
        """Whether the backbone reads token ids [B, L] rather than images."""
        return self.backbone.modality == TOKENS

    def backbone_input(self, inputs: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] are normalised; token ids [B, L] pass as they are."""
        if self.takes_tokens:
            return inputs
        images = (inputs - self.mean) / self.std
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def forward_features(self, inputs: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] (or token ids [B, L] for a token backbone) -> features [B, D]."""
        return self.backbone(self.backbone_input(inputs))

    def attention(self, inputs: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """Per-layer attention weights [B, H, L, L] of a transformer backbone, and its padding
        mask [B, L] (True at padding; ``None`` for images)."""
        if not self.backbone.supports(ATTENTION):
            raise ValueError(f"backbone '{self.backbone_config['name']}' has no attention to show")
        _, padding, maps = self.backbone.forward_tokens(self.backbone_input(inputs), need_weights=True)
        return maps, padding

    def forward_heads(self, features: Tensor) -> dict[str, Tensor]:
        if self.fuse_heads:
            return fused_head_logits(self.heads, features, self.training)
        return {name: head(features) for name, head in self.heads.items()}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.forward_heads(self.forward_features(images))

    def prune_heads(self, heads: list[list[int]]) -> None:
        """Remove attention heads of a transformer backbone (``heads[l]``: original indices in layer
        ``l``). The choice is recorded in the backbone config, so the pruned model saves and loads."""
        if not self.backbone.supports(HEAD_PRUNING):
            raise ValueError(f"backbone '{self.backbone_config['name']}' has no attention heads to prune")
        self.backbone.prune_heads(heads)
        previous = self.backbone_config.get("pruned_heads") or [[] for _ in heads]
        self.backbone_config["pruned_heads"] = [sorted(set(a) | set(b)) for a, b in zip(previous, heads)]

    def hierarchy(self, task: str) -> Tensor:
        """Bool [parent classes, task classes] of the classes a parent class allows."""
        return getattr(self, f"allowed_{task}")

    @torch.no_grad()
    def probabilities(self, logits: Mapping[str, Tensor], allowed: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Per-task probabilities; child tasks are decoded under their parent's predicted class.

        ``allowed`` may give per-sample allowed-class masks [B, C] that are applied as well.
        Multiclass: softmax over allowed classes [B, C]; binary: P(positive) [B];
        multilabel: independent sigmoids [B, C].
        """
        allowed = dict(allowed or {})
        probs: dict[str, Tensor] = {}
        order = sorted(self.tasks.values(), key=lambda t: t.parent is not None)  # parents first
        for task in order:
            out = logits[task.name].float()
            if task.kind == "multiclass":
                mask = allowed.get(task.name)
                if task.parent is not None:
                    derived = self.hierarchy(task.name)[probs[task.parent].argmax(-1)]
                    if mask is None:
                        mask = derived
                    else:  # where the predicted parent contradicts the given set, the data wins
                        both = mask & derived
                        mask = torch.where(both.any(-1, keepdim=True), both, mask)
                probs[task.name] = torch.softmax(apply_output_mask(out, mask), dim=-1)
            elif task.kind == "binary":
                probs[task.name] = torch.sigmoid(out.squeeze(-1))
            else:
                probs[task.name] = torch.sigmoid(out)
        return {t: probs[t] for t in self.tasks}

    @torch.no_grad()
    def predict(self, inputs: Any, batch_size: int = 64, threshold: float = 0.5) -> dict[str, TaskPrediction]:
        """Class names and probabilities per task for images (paths, PIL, arrays or tensors), or
        for a token model, texts (a string or a list; encoded with the saved tokenizer) or ids.

        Runs in eval mode without gradients; a child task is decoded under its parent's
        predicted class, so a prediction is never outside its allowed set.
        """
        items = self.predict_items(inputs)
        was_training = self.training
        self.eval()
        try:
            chunks = [
                self.probabilities(self(self.input_batch(items[i : i + batch_size])))
                for i in range(0, len(items), batch_size)
            ]
        finally:
            self.train(was_training)
        probs = {name: torch.cat([c[name] for c in chunks]).cpu() for name in self.tasks}
        return decode_predictions(self.tasks.values(), probs, threshold)

    def predict_items(self, inputs: Any) -> Sequence[Any] | Tensor:
        """:meth:`predict`'s inputs as a batch to slice: a list, an image batch [B, 3, H, W]
        or, for a token model, an id batch [B, L]; a single input becomes a batch of one."""
        if isinstance(inputs, (list, tuple)):
            return inputs
        if self.takes_tokens and isinstance(inputs, (np.ndarray, Tensor)):
            ids = torch.as_tensor(inputs)
            return ids[None] if ids.ndim == 1 else ids
        if isinstance(inputs, (np.ndarray, Tensor)) and inputs.ndim == 4:
            return inputs
        return [inputs]

    def input_batch(self, items: Sequence[Any] | Tensor) -> Tensor:
        """Network input on the net's device for a slice of :meth:`predict_items`."""
        batch = self.token_batch(items) if self.takes_tokens else self.image_batch(items)
        return batch.to(self.mean.device)

    def token_batch(self, items: Sequence[Any] | Tensor) -> Tensor:
        """Token ids long [B, L]: integer ids as given, texts through the saved tokenizer."""
        if isinstance(items, Tensor) and not items.is_floating_point():
            return items.long()
        if self.tokenizer is None:
            raise DataError("this model reads token ids and has no saved tokenizer for text; give ids as an integer tensor [B, L]")
        other = next((item for item in items if not isinstance(item, str)), None)
        if other is not None:
            raise DataError(
                f"this model reads text ({self.tokenizer.kind} tokenizer); got {type(other).__name__}, "
                "expected a string or a list of strings"
            )
        return self.tokenizer.encode(list(items), max_length=self.preprocess.image_size[-1])

    def image_batch(self, items: Sequence[Any] | Tensor) -> Tensor:
        """Images float [B, 3, H, W] in [0, 1] at ``image_size``; a string must be an image file."""
        if isinstance(items, (list, tuple)):
            for item in items:
                if isinstance(item, str) and not _is_file(item):
                    raise DataError(
                        f"image '{item}' not found; this model reads images (paths, PIL images, arrays or tensors) "
                        "and has no tokenizer for text"
                    )
        return to_batch(items, self.preprocess.image_size)

    def config(self) -> dict[str, Any]:
        """Plain-data description that rebuilds this network with :meth:`from_config`."""
        return {
            "backbone": {k: v for k, v in self.backbone_config.items() if k not in LOAD_TIME_OPTIONS},
            "tasks": tasks_to_dicts(self.tasks.values()),
            "preprocess": asdict(self.preprocess),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MultiHeadNet":
        return cls(
            backbone=config["backbone"],
            tasks=tasks_from_dicts(config["tasks"]),
            preprocess=Preprocess(**config.get("preprocess", {})),
        )


def backbone_takes_tokens(backbone: Mapping[str, Any]) -> bool:
    """Whether the backbone a config describes reads token ids [B, L] rather than images (its
    declared modality, read without allocating it)."""
    return describe_backbone(backbone).modality == TOKENS


def _is_file(path: str) -> bool:
    """Whether ``path`` names a file; a text too long or too odd to be a path is not one."""
    try:
        return Path(path).expanduser().is_file()
    except (OSError, ValueError):
        return False
