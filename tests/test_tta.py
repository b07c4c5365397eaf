"""Test-time augmentation: each head averaged over the image and its mirror, read through its flip rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mhc
from mhc.api import evaluate, predict
from mhc.data.generated import generate_split
from mhc.errors import ConfigError
from mhc.predictor import OutputDecoder, flip_views
from mhc.tasks import TaskSpec
from tests.api.conftest import compose_config

SIDE = TaskSpec("side", "multiclass", ["left", "right", "middle"], hflip={"left": "right"})
HAND = TaskSpec("hand", "binary", ["left", "right"], hflip={"left": "right"})
TAGS = TaskSpec("tags", "multilabel", ["west", "east", "sky"], hflip={"west": "east"})
SHAPE = TaskSpec("shape", "multiclass", ["round", "square"])
TEXT = TaskSpec("text", "multiclass", ["a", "b"], hflip="mask")
TASKS = [SIDE, HAND, TAGS, SHAPE, TEXT]


def halves(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """A model that sees the left and right halves: mirroring an image swaps its two features."""
    left, right = images[..., : images.shape[-1] // 2].mean((1, 2, 3)), images[..., images.shape[-1] // 2 :].mean((1, 2, 3))
    columns = images.mean((1, 2))  # [B, W]
    return {"side": torch.stack([left, right, torch.zeros_like(left)], -1), "hand": (right - left)[:, None],
            "tags": torch.stack([left, right, left + right], -1), "shape": columns[:, :2] * 3,
            "text": torch.stack([left, 2 * right], -1)}


def test_a_class_map_reads_the_mirror_back_and_an_invariant_head_averages_both_views():
    images = torch.rand(5, 3, 4, 6)
    decoder = OutputDecoder(TASKS)
    plain = decoder.probabilities(halves(images))
    averaged = decoder.probabilities(flip_views(TASKS, halves, images))
    for name in ("side", "hand", "tags"):  # mirror-equivariant, and mapped back: the same as the plain view
        torch.testing.assert_close(averaged[name], plain[name])
    mirrored = decoder.probabilities(halves(images.flip(-1)))
    torch.testing.assert_close(averaged["shape"], (plain["shape"] + mirrored["shape"]) / 2)
    assert not torch.allclose(averaged["shape"], plain["shape"])
    torch.testing.assert_close(averaged["text"], plain["text"])  # hflip=mask: a mirror says nothing of this head
    with pytest.raises(ConfigError, match="tta=flip mirrors images; this model reads tokens"):
        flip_views(TASKS, halves, torch.ones(2, 8, dtype=torch.long))


def test_a_child_is_decoded_under_the_averaged_parent():
    coarse = TaskSpec("coarse", "multiclass", ["a", "b"])
    fine = TaskSpec("fine", "multiclass", ["a1", "a2", "b1"], parent="coarse", allowed_by_parent={"a": ["a1", "a2"], "b": ["b1"]})
    decoder = OutputDecoder([coarse, fine])
    # the plain view says "a" weakly, the mirror "b" strongly: the average is "b", so "fine" is b1
    views = {"coarse": [torch.tensor([[0.2, 0.0]]), torch.tensor([[0.0, 3.0]])], "fine": [torch.tensor([[5.0, 0.0, 0.0]])] * 2}
    probs = decoder.probabilities(views)
    assert probs["coarse"].argmax(-1).item() == 1
    torch.testing.assert_close(probs["fine"], torch.tensor([[0.0, 0.0, 1.0]]))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("tta")
    mhc.api.train(compose_config("train", out, "test=false", "backbone.widths=[8,16]"))
    return out / "checkpoints" / "last.ckpt"


def test_load_predict_eval_and_predict_take_tta_flip(checkpoint, tmp_path):
    model = mhc.load(checkpoint)
    images = torch.from_numpy(generate_split(6, seed=3, missing_fraction=0.0)[0]).permute(0, 3, 1, 2).float() / 255
    plain, mirrored = model.predict(images), model.predict(images.flip(-1))
    both = model.predict(images, tta="flip")
    torch.testing.assert_close(both["shape"].probs, (plain["shape"].probs + mirrored["shape"].probs) / 2)
    swap = [model.tasks["position"].classes.index(c) for c in ("top-right", "top-left", "bottom-right", "bottom-left")]
    torch.testing.assert_close(both["position"].probs, (plain["position"].probs + mirrored["position"].probs[:, swap]) / 2)
    with pytest.raises(ConfigError, match=r"tta must be null or one of \['flip'\], got 'rotate'"):
        model.predict(images, tta="rotate")

    names = []
    for i, image in enumerate(generate_split(6, seed=3, missing_fraction=0.0)[0]):
        Image.fromarray(image).save(tmp_path / f"img{i}.png")
        names.append(f"img{i}.png")
    pd.DataFrame({"image": names}).to_csv(tmp_path / "predict.csv", index=False)
    out = predict(compose_config("predict", tmp_path, f"ckpt={checkpoint}", f"data.predict={tmp_path}/predict.csv", "tta=flip"))
    table = pd.read_csv(out, keep_default_na=False)
    direct = model.predict([str(tmp_path / n) for n in names], tta="flip")
    columns = [f"position__p_{c}" for c in direct["position"].classes]
    assert np.allclose(table[columns].to_numpy(), direct["position"].probs.numpy(), atol=1e-5)

    flipped = evaluate(compose_config("eval", tmp_path / "eval", f"ckpt={checkpoint}", "tta=flip"))
    assert set(flipped) == set(model.tasks) and all(0.0 <= v["acc"] <= 1.0 for v in flipped.values())
    with pytest.raises(ConfigError, match="tta must be null or one of"):
        evaluate(compose_config("eval", tmp_path / "eval", f"ckpt={checkpoint}", "tta=mirror"))
