"""The network: a shared backbone feeding one classification head per task.

Plain PyTorch, no Lightning: ``MultiHeadNet(inputs) -> {task: logits}``, where inputs are images
float [B, 3, H, W] in [0, 1] (normalised inside, so exported graphs take them as they are) or
token ids [B, L] for a token backbone. Reading raw inputs is the processor's part
(:mod:`mhc.processing.processors`) and decoding logits the predictor's (:mod:`mhc.predictor`);
the net keeps its processor and tasks as plain data, so a checkpoint describes itself, and
:meth:`MultiHeadNet.predict` runs the three together.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from mhc.errors import ConfigError
from mhc.masks import hierarchy_matrix
from mhc.model.backbones import create_backbone
from mhc.model.backbones.adapters import merge_lora
from mhc.model.backbones.base import ATTENTION, HEAD_PRUNING, LOAD_TIME_OPTIONS, TOKENS
from mhc.model.backbones.registry import describe_backbone
from mhc.model.heads import ClassificationHead, fused_head_logits
from mhc.predictor import Predictor, TaskPrediction
from mhc.processing.processors import IMAGE, ImageProcessor, Processor, TextProcessor, processor_of
from mhc.processing.tokenizer import Tokenizer
from mhc.tasks import TaskSpec, tasks_from_dicts, tasks_to_dicts


class MultiHeadNet(nn.Module):
    """Shared backbone + per-task heads; forward returns raw logits per task.

    Args:
        backbone: backbone options, ``{"name": "resnet18", ...}`` (see ``create_backbone``).
        tasks: the tasks, in the order heads are evaluated.
        processor: how raw inputs become network input (default: 64x64 images, or token ids
            up to the backbone's ``max_length``); an image processor's ``mean``/``std`` are
            applied inside ``forward``.
    """

    # Speed options (mhc.training.speed): single-linear heads share one matmul; NHWC image input.
    fuse_heads: bool = True
    channels_last: bool = False

    def __init__(self, backbone: Mapping[str, Any], tasks: Sequence[TaskSpec], processor: Processor | None = None) -> None:
        super().__init__()
        self.backbone_config = dict(backbone)
        self.tasks = {t.name: t for t in tasks}
        self.backbone = create_backbone(**self.backbone_config)
        self.backbone_config.update(self.backbone.saved_options())  # e.g. a downloaded model's architecture
        if processor is None:
            processor = TextProcessor(max_length=self.backbone.max_length) if self.takes_tokens else ImageProcessor()
        if (processor.kind == IMAGE) == self.takes_tokens:
            raise ConfigError(f"backbone '{self.backbone_config.get('name')}' reads {self.backbone.modality} but the "
                              f"processor gives {processor.kind} input")
        self.processor = processor
        if self.takes_tokens:
            processor.vocab_size = int(self.backbone.vocab_size)  # type: ignore[attr-defined]
        dim = self.backbone.num_features
        self.heads = nn.ModuleDict(
            {t.name: ClassificationHead(dim, t.num_outputs, t.hidden, t.dropout) for t in tasks}
        )
        if isinstance(processor, ImageProcessor):
            self.register_buffer("mean", torch.tensor(processor.mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(processor.std).view(1, -1, 1, 1), persistent=False)
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

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The saved tokenizer of a text model (``None`` for images, or a model that reads ids only)."""
        return getattr(self.processor, "tokenizer", None)

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

    def merge_adapters(self) -> "MultiHeadNet":
        """Merge the backbone's LoRA adapters into its weights (in place): the same outputs from a
        plain backbone, whose description no longer names adapters."""
        merge_lora(self.backbone)
        self.backbone_config.pop("lora", None)
        return self

    def hierarchy(self, task: str) -> Tensor:
        """Bool [parent classes, task classes] of the classes a parent class allows."""
        return getattr(self, f"allowed_{task}")

    @torch.no_grad()
    def predict(self, inputs: Any, batch_size: int = 64, threshold: float | None = None,
                tta: str | None = None, min_confidence: float | None = None) -> dict[str, TaskPrediction]:
        """Class names and probabilities per task for raw inputs: images (paths, PIL images,
        arrays or tensors), or for a text model, texts (a string or a list) or token ids.

        Runs in eval mode without gradients; a child task is decoded under its parent's
        predicted class, so a prediction is never outside its allowed set. ``tta="flip"``
        averages each task's probabilities over the image and its mirror, through the task's
        flip rule (:mod:`mhc.predictor`). Binary and multilabel classes are decided at each task's
        thresholds, or ``threshold``; a multiclass or binary head whose top probability is under
        its ``min_confidence`` (or the ``min_confidence`` given) answers ``None``.
        """
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            predictor = Predictor(self.tasks.values(), self.processor, self, device)
            return predictor.predict(inputs, batch_size, threshold, tta, min_confidence)
        finally:
            self.train(was_training)

    def config(self) -> dict[str, Any]:
        """Plain-data description that rebuilds this network with :meth:`from_config`."""
        return {
            "backbone": {k: v for k, v in self.backbone_config.items() if k not in LOAD_TIME_OPTIONS},
            "tasks": tasks_to_dicts(self.tasks.values()),
            "processor": self.processor.to_dict(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MultiHeadNet":
        """The network :meth:`config` describes; the processor is validated first, and a
        description an earlier mhc wrote (``preprocess``) is read as well."""
        processor = processor_of(config)
        return cls(backbone=config["backbone"], tasks=tasks_from_dicts(config["tasks"]), processor=processor)


def backbone_takes_tokens(backbone: Mapping[str, Any]) -> bool:
    """Whether the backbone a config describes reads token ids [B, L] rather than images (its
    declared modality, read without allocating it)."""
    return describe_backbone(backbone).modality == TOKENS
