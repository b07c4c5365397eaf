"""Image files decoded to RGB pixels: JPEGs through torchvision.io give Pillow's pixels, and
every other case keeps Pillow's reading and errors."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
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


def test_a_large_image_is_reduced_in_8_bits_to_within_one_level_of_the_float_result():
    import torch.nn.functional as F

    from mhc.processing.processors import ImageProcessor

    pixels = np.random.default_rng(0).integers(0, 256, (1000, 900, 3), dtype=np.uint8)
    reduced = ImageProcessor(size=[64, 64]).load(pixels)
    exact = F.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255, size=(64, 64), mode="bilinear",
                          antialias=True, align_corners=False)[0]
    assert reduced.dtype == torch.float32 and (reduced - exact).abs().max() <= 1 / 255


def test_a_large_image_never_takes_4_bytes_a_value_at_full_size():
    """A 6000 x 6000 photo (108 MB of 8-bit pixels) read for a 64 x 64 model: the peak memory
    grows by about one copy of its pixels (float pixels at full size would be four more)."""
    script = textwrap.dedent("""
        import resource
        import numpy as np
        from mhc.processing.processors import ImageProcessor
        photo = np.zeros((6000, 6000, 3), dtype=np.uint8)
        photo[::7] = 200
        processor = ImageProcessor(size=[64, 64])
        processor.load(photo[:128, :128])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        processor.load(photo)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    grown = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert grown < 2 * 108, f"{grown:.0f} MB"
