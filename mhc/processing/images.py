"""Reading user images (paths, PIL images, arrays, tensors) as float tensors; resizing and
batching are the image processor's (:mod:`mhc.processing.processors`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mhc.errors import DataError

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # "I": 16-bit PNGs in some Pillow versions


def read_image(path: str | Path | Any) -> np.ndarray:
    """An RGB image file (a path or an open file) as uint8 [H, W, 3]; an unreadable file is a
    :class:`DataError`.

    Any 8-bit mode (grey, palette, CMYK, with alpha, ...) is converted to RGB, alpha dropped;
    16-bit grey is scaled to 8 bits (Pillow would clip it). Float images are rejected: their
    range is unknown. Pillow reads the header (and refuses decompression bombs); RGB and grey
    JPEGs are then decoded by ``torchvision.io`` (libjpeg-turbo, twice Pillow's speed on small
    images, the same pixels), everything else by Pillow.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                try:
                    return decode_jpeg_file(path, image.size)
                except RuntimeError:  # what libjpeg-turbo refuses (a truncated file, ...) Pillow reads or reports
                    pass
            if image.mode in SIXTEEN_BIT_MODES:
                return _sixteen_bit_to_rgb(np.asarray(image), path)
            if image.mode == "F":
                raise DataError(f"image '{path}' has 32-bit float pixels (mode 'F'); expected 8- or 16-bit images")
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image '{path}' not found") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"image '{path}' is too large to read safely ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"image '{path}' could not be read ({err})") from None


def decode_jpeg_file(path: str | Path | Any, size: tuple[int, int]) -> np.ndarray:
    """A JPEG file decoded by ``torchvision.io`` as RGB uint8 [H, W, 3] (``size``: Pillow's
    (width, height) from the header, checked against the result)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if hasattr(path, "read"):
        path.seek(0)
        data = torch.frombuffer(bytearray(path.read()), dtype=torch.uint8)
    else:
        data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    pixels = decode_jpeg(data, mode=ImageReadMode.RGB)
    if tuple(pixels.shape[1:]) != (size[1], size[0]):
        raise OSError(f"decoded {list(pixels.shape[1:])} pixels, but the header says {size[1]}x{size[0]}")
    return pixels.permute(1, 2, 0).numpy()


def _sixteen_bit_to_rgb(grey: np.ndarray, path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] from 16-bit grey [H, W]: 0..65535 onto 0..255, the way 8-bit files store it."""
    if grey.min(initial=0) < 0 or grey.max(initial=0) > 65535:
        raise DataError(f"image '{path}' has pixel values outside 0..65535; expected 8- or 16-bit images")
    scaled = np.rint(grey.astype(np.float32) / 257.0).astype(np.uint8)
    return np.repeat(scaled[..., None], 3, axis=-1)


def image_tensor(image: Any, as_float: bool = True) -> Tensor:
    """One image as float [3, H, W] in [0, 1]: a path or an open file of an image file, a PIL
    image, a uint8 array [H, W, 3] or [H, W], or a tensor [3, H, W]. ``as_float=False`` keeps
    8-bit pixels as uint8 (a large image is then reduced before it takes 4 bytes a value)."""
    if isinstance(image, (str, Path)) or hasattr(image, "read"):
        image = read_image(image)
    elif type(image).__module__.startswith("PIL"):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise DataError(f"an image array must be [H, W, 3] or [H, W], got shape {list(image.shape)}")
        tensor = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        tensor = image
    else:
        raise DataError(f"cannot read an image from a {type(image).__name__}; expected a path, file, PIL image, array or tensor")
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise DataError(f"an image tensor must be [3, H, W], got shape {list(tensor.shape)}")
    tensor = tensor.expand(3, -1, -1)
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255 if as_float else tensor
    return tensor.float()
