"""Image files decoded to RGB pixels: JPEGs through torchvision.io give Pillow's pixels, and
every other case keeps Pillow's reading and errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mhc.errors import DataError
from mhc.processing.images import image_tensor, read_image


def pillow_rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("mode, size, quality", [("RGB", (32, 32), 90), ("RGB", (224, 160), 75), ("L", (48, 40), 95),
                                                 ("CMYK", (20, 24), 90)])
def test_jpegs_decode_to_pillows_pixels(tmp_path, mode, size, quality):
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze(-1 if channels == 1 else ())
    path = tmp_path / "image.jpg"
    Image.fromarray(pixels, mode=mode).save(path, quality=quality)
    decoded = read_image(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (size[1], size[0], 3)
    np.testing.assert_array_equal(decoded, pillow_rgb(path))
    np.testing.assert_array_equal(read_image(io.BytesIO(path.read_bytes())), decoded)  # an open file reads the same
    assert image_tensor(io.BytesIO(path.read_bytes())).shape == (3, size[1], size[0])


def test_a_truncated_jpeg_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"image '.*cut\.jpg' could not be read"):
        read_image(path)
