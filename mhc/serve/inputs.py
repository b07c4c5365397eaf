"""What a request carries: the JSON body's schema and its inputs decoded into the rows the
model reads (images from base64 files or nested lists, texts or token ids), each checked first."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, Optional, Sequence

import numpy as np
import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from torch import Tensor

from mhc.errors import DataError
from mhc.model.net import MultiHeadNet

MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused before they are decoded
IMAGE_FORMS = "a base64-encoded PNG/JPEG file or a nested list [H][W][3] or [3][H][W] of floats in [0, 1]"




class PredictRequest(BaseModel):
    """The JSON body of ``POST /predict``; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any]
    threshold: Optional[float] = Field(None, ge=0.0, le=1.0)  # None: each task's own thresholds
    min_confidence: Optional[float] = Field(None, ge=0.0, le=1.0)  # None: each task's own


def decode_inputs(net: MultiHeadNet, items: Sequence[Any], what: str = "input") -> Tensor:
    """Request inputs -> network rows: images float [N, 3, H, W] at the model's size, or token
    ids long [N, max_length]. A bad item is a :class:`DataError` naming ``what`` and its index."""
    rows = []
    for index, item in enumerate(items):
        try:
            rows.append(token_row(net, item) if net.takes_tokens else image_row(net, item))
        except DataError as err:
            raise DataError(f"{what} {index}: {err}") from None
    return torch.stack(rows)


def image_row(net: MultiHeadNet, item: Any) -> Tensor:
    """One image (file bytes, a base64 string or a nested list) -> float [3, H, W] in [0, 1],
    resized by the model's processor."""
    if isinstance(item, bytes):
        image: np.ndarray | Tensor = image_from_bytes(item)
    elif isinstance(item, str):
        image = image_from_bytes(base64_bytes(item))
    elif isinstance(item, list):
        image = image_from_list(item)
    else:
        raise DataError(f"expected {IMAGE_FORMS}, got {json_type(item)}")
    return net.processor.load(image)


def base64_bytes(text: str) -> bytes:
    """The bytes of a base64 string, with or without a ``data:image/...;base64,`` prefix."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise DataError(f"not a base64-encoded image ({err}); this model reads {IMAGE_FORMS}") from None
    if not data:
        raise DataError("the base64 string is empty")
    return data


def image_from_bytes(data: bytes) -> np.ndarray:
    """An image file's bytes -> uint8 [H, W, 3]; the size is checked before pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            check_image_size(*image.size)
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise DataError("not a readable image file (expected PNG or JPEG)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"the image file could not be decoded ({' '.join(str(err).split())})") from None


def image_from_list(values: list[Any]) -> Tensor:
    """A nested list [H][W][3] or [3][H][W] of floats in [0, 1] -> float [3, H, W]."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError):
        raise DataError("an image list must be a regular nested list of numbers (same length in every row)") from None
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise DataError(f"an image list must be [H][W][3] or [3][H][W], got shape {list(array.shape)}")
    tensor = torch.from_numpy(array)
    tensor = tensor.permute(2, 0, 1) if array.shape[-1] == 3 else tensor
    check_image_size(tensor.shape[2], tensor.shape[1])
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise DataError(
            f"image values must be floats in [0, 1], got values in [{tensor.min().item():g}, {tensor.max().item():g}]"
        )
    return tensor


def check_image_size(width: int, height: int) -> None:
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"image of {width}x{height} pixels; the service takes 1 to {MAX_IMAGE_PIXELS} pixels")


def token_row(net: MultiHeadNet, item: Any) -> Tensor:
    """One text or list of token ids -> ids long [max_length], right-padded, cut at ``max_length``."""
    if isinstance(item, str):
        if net.tokenizer is None:
            raise DataError("this model has no saved tokenizer for text; give a list of token ids")
        ids = net.tokenizer.ids(item)
    elif isinstance(item, list):
        ids = item
        wrong = next((pos for pos, i in enumerate(ids) if not isinstance(i, int) or isinstance(i, bool)), None)
        if wrong is not None:
            raise DataError(f"token ids must be integers; item {wrong} is {json_type(ids[wrong])}")
    else:
        raise DataError(f"this model reads {token_forms(net)}, got {json_type(item)}")
    processor = net.processor
    ids = ids[: processor.max_length]
    if all(i == processor.pad_id for i in ids):
        raise DataError("no tokens (the input is empty or all padding); give at least one token")
    vocab_size = token_vocab_size(net)
    outside = next(((pos, i) for pos, i in enumerate(ids) if not 0 <= i < vocab_size), None)
    if outside is not None:
        raise DataError(f"token id {outside[1]} at position {outside[0]} is outside the vocabulary [0, {vocab_size})")
    return processor.pad(ids)


def token_vocab_size(net: MultiHeadNet) -> int:
    return int(net.backbone.vocab_size)


def token_forms(net: MultiHeadNet) -> str:
    return "texts or lists of integer token ids" if net.tokenizer is not None else "lists of integer token ids"


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {str: "a string", list: "a list", dict: "an object", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def input_description(net: MultiHeadNet) -> dict[str, Any]:
    """What the model reads, for ``/health`` and ``/metadata``."""
    if net.takes_tokens:
        return {"kind": "tokens", "max_length": net.processor.max_length, "vocab_size": token_vocab_size(net),
                "tokenizer": None if net.tokenizer is None else net.tokenizer.kind, "accepts": token_forms(net)}
    return {"kind": "image", "size": list(net.processor.size), "channels": 3, "accepts": IMAGE_FORMS,
            "other_sizes": "resized"}


def parse_predict_body(body: bytes) -> PredictRequest:
    """A ``POST /predict`` body -> the request; invalid JSON or fields raise :class:`RequestValidationError`."""
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_input=False)) from None


def check_json_body(request: Request) -> None:
    """``POST /predict`` reads JSON whatever the content type says, but a form upload goes elsewhere."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise HTTPException(415, "POST /predict takes a JSON body {\"inputs\": [...]}; send image files to /predict/image")
