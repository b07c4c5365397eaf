"""Processors: how raw inputs become network input, one per modality, saved with the model.

A processor is the single place where images are read and resized, and texts tokenized,
padded and cut. It serves training data modules, ``predict``, ``mhc-predict``, ONNX Runtime
inference and the HTTP service alike, so what a model reads at prediction is made by the same
code as what it was trained on. It travels in checkpoints and export folders as plain data
(:meth:`Processor.to_dict`, rebuilt by :func:`processor_from_dict`, which validates it first).

* :class:`ImageProcessor`: paths, PIL images, arrays or tensors -> float ``[B, 3, H, W]`` in
  [0, 1] at ``size`` (bilinear, antialiased). ``mean`` and ``std`` are the normalisation the
  network applies as its first step, so exported graphs take images in [0, 1].
* :class:`TextProcessor`: texts (through the saved tokenizer) or token ids -> ids
  ``[B, max_length]``, right-padded, cut at ``max_length``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mhc.errors import CheckpointError, DataError
from mhc.processing.images import image_tensor
from mhc.processing.tokenizer import Tokenizer, tokenizer_from_dict

IMAGE, TEXT = "image", "text"
REDUCE_IN_8_BITS = 16  # an 8-bit image of more than this many times the target's pixels is resized in 8 bits
MAX_SIDE = 16384  # a larger image size in a stored description is refused before anything is allocated
MAX_LENGTH = 1 << 20


class Processor:
    """Raw inputs -> network input. Subclasses give :meth:`items`, :meth:`batch` and :meth:`to_dict`."""

    kind: ClassVar[str]

    def items(self, inputs: Any) -> Sequence[Any] | Tensor:
        """``predict``'s argument as a batch to slice: a list (one input becomes a list of one),
        or an already stacked batch tensor."""
        raise NotImplementedError

    def batch(self, items: Sequence[Any] | Tensor) -> Tensor:
        """Network input for a slice of :meth:`items`."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class ImageProcessor(Processor):
    """Images -> float ``[B, 3, H, W]`` in [0, 1] at ``size`` ``[H, W]``; ``mean``/``std`` per channel."""

    kind: ClassVar[str] = IMAGE
    size: list[int] = field(default_factory=lambda: [64, 64])
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])

    def __post_init__(self) -> None:
        self.size = [int(s) for s in self.size]
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        if len(self.size) != 2 or not all(0 < s <= MAX_SIDE for s in self.size):
            raise ValueError(f"image size must be [height, width] of 1 to {MAX_SIDE} pixels, got {self.size}")
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ValueError(f"mean and std need 1 or 3 values each, got {self.mean} and {self.std}")
        if not all(math.isfinite(s) and s > 0 for s in self.std) or not all(math.isfinite(m) for m in self.mean):
            raise ValueError(f"std must be positive and mean finite, got mean {self.mean}, std {self.std}")

    def load(self, image: Any) -> Tensor:
        """One image (a path, PIL image, array or tensor) -> float ``[3, H, W]`` in [0, 1] at ``size``."""
        return self.resize(image_tensor(image, as_float=False))

    def resize(self, image: Tensor) -> Tensor:
        """``[3, h, w]`` -> float ``[3, H, W]`` (bilinear, antialiased); the same size passes as it
        is. 8-bit pixels more than :data:`REDUCE_IN_8_BITS` times the target's area are resized
        as they are (to within one level of 255 of the float result), so a large photo never
        takes 4 bytes a value at its full size; others become floats in [0, 1] first."""
        size = tuple(self.size)
        if image.dtype == torch.uint8:
            large = image.shape[-2] * image.shape[-1] > REDUCE_IN_8_BITS * size[0] * size[1]
            if large:
                image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                                      align_corners=False)[0]
            image = image.float() / 255
        if tuple(image.shape[-2:]) == size:
            return image
        return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]

    def items(self, inputs: Any) -> Sequence[Any] | Tensor:
        if isinstance(inputs, (list, tuple)):
            return inputs
        if isinstance(inputs, (np.ndarray, Tensor)) and inputs.ndim == 4:
            return inputs
        return [inputs]

    def batch(self, items: Sequence[Any] | Tensor) -> Tensor:
        if isinstance(items, Tensor) and items.ndim == 4:
            batch = items.float() / 255 if items.dtype == torch.uint8 else items.float()
            return torch.stack([self.resize(image) for image in batch]) if tuple(batch.shape[-2:]) != tuple(self.size) else batch
        for item in items:
            if isinstance(item, str) and not _is_file(item):
                raise DataError(f"image '{item}' not found; this model reads images (paths, PIL images, arrays or "
                                "tensors) and has no tokenizer for text")
        return torch.stack([self.load(image) for image in items])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": IMAGE, "size": list(self.size), "mean": list(self.mean), "std": list(self.std)}


@dataclass
class TextProcessor(Processor):
    """Texts or token ids -> ids long ``[B, max_length]``, right-padded with the tokenizer's ``pad_id``.

    ``tokenizer`` may be ``None`` for a model that reads ids only (then ``pad_id`` pads).
    """

    kind: ClassVar[str] = TEXT
    tokenizer: Tokenizer | None = None
    max_length: int = 128
    pad_id: int = 0
    vocab_size: int | None = field(default=None, compare=False)  # the model's ids: given ids are checked against it

    def __post_init__(self) -> None:
        self.max_length = int(self.max_length)
        if not 0 < self.max_length <= MAX_LENGTH:
            raise ValueError(f"max_length must be 1 to {MAX_LENGTH}, got {self.max_length}")
        if self.tokenizer is not None:
            self.pad_id = self.tokenizer.pad_id

    def items(self, inputs: Any) -> Sequence[Any] | Tensor:
        if isinstance(inputs, (list, tuple)):
            return inputs
        if isinstance(inputs, (np.ndarray, Tensor)):
            ids = torch.as_tensor(inputs)
            return ids[None] if ids.ndim == 1 else ids
        return [inputs]

    def batch(self, items: Sequence[Any] | Tensor) -> Tensor:
        """Token ids as given (integer tensors), texts through the tokenizer."""
        if isinstance(items, Tensor) and not items.is_floating_point():
            return self.check_ids(items.long()[:, : self.max_length])
        if self.tokenizer is None:
            raise DataError("this model reads token ids and has no saved tokenizer for text; give ids as an integer tensor [B, L]")
        other = next((item for item in items if not isinstance(item, str)), None)
        if other is not None:
            raise DataError(f"this model reads text ({self.tokenizer.kind} tokenizer); got {type(other).__name__}, "
                            "expected a string or a list of strings")
        return self.tokenizer.encode(list(items), max_length=self.max_length)

    def check_ids(self, ids: Tensor) -> Tensor:
        """``ids`` [B, L], each within the model's vocabulary (when known), else a :class:`DataError`
        naming the first id outside it (an embedding would fail on it, or read another row)."""
        if self.vocab_size is not None and ids.numel():
            outside = (ids < 0) | (ids >= self.vocab_size)
            if bool(outside.any()):
                row, position = (int(i) for i in outside.nonzero()[0])
                raise DataError(f"input {row}: token id {int(ids[row, position])} at position {position} is outside "
                                f"the model's vocabulary of {self.vocab_size} ids (0 to {self.vocab_size - 1})")
        return ids

    def pad(self, ids: Sequence[int]) -> Tensor:
        """One sequence of token ids -> ids long ``[max_length]``, cut and right-padded."""
        row = torch.full((self.max_length,), self.pad_id, dtype=torch.long)
        ids = list(ids)[: self.max_length]
        row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return row

    def to_dict(self) -> dict[str, Any]:
        return {"kind": TEXT, "max_length": self.max_length, "pad_id": self.pad_id,
                "tokenizer": None if self.tokenizer is None else self.tokenizer.to_dict()}


def processor_from_dict(description: Any, source: str | Path = "the model description") -> Processor:
    """Rebuild a processor from :meth:`Processor.to_dict` data, validated before anything is
    allocated; a description an earlier mhc wrote (``image_size``, ``mean``, ``std``,
    ``tokenizer``) is read as well. A bad one is a :class:`CheckpointError` naming ``source``."""
    if not isinstance(description, Mapping):
        raise CheckpointError(f"{source}: the processor must be a mapping, got {type(description).__name__}")
    try:
        if "kind" not in description:  # written before processors: {image_size, mean, std, tokenizer}
            if description.get("tokenizer") is not None:
                return TextProcessor(tokenizer_from_dict(description["tokenizer"]), int(description["image_size"][-1]))
            options = {k: description[k] for k in ("mean", "std") if k in description}
            return ImageProcessor(size=list(description.get("image_size", [64, 64])), **options)
        kind = description["kind"]
        if kind == IMAGE:
            return ImageProcessor(size=list(description["size"]), mean=list(description["mean"]), std=list(description["std"]))
        if kind == TEXT:
            saved = description.get("tokenizer")
            return TextProcessor(None if saved is None else tokenizer_from_dict(saved), int(description["max_length"]),
                                 int(description.get("pad_id", 0)))
        raise CheckpointError(f"{source}: unknown processor kind {kind!r}; expected '{IMAGE}' or '{TEXT}'")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{source}: invalid processor description ({type(err).__name__}: {err})") from None


def processor_of(description: Mapping[str, Any], source: str | Path = "the model description") -> Processor:
    """The processor of a model description (``MultiHeadNet.config()`` data): its ``processor``,
    or the ``preprocess`` an earlier mhc wrote."""
    saved = description["processor"] if "processor" in description else description.get("preprocess", {})
    return processor_from_dict(saved, source)


def _is_file(path: str) -> bool:
    """Whether ``path`` names a file; a text too long or too odd to be a path is not one."""
    try:
        return Path(path).expanduser().is_file()
    except (OSError, ValueError):
        return False
