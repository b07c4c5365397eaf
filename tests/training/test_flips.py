"""augment.hflip_check: flips turned on only when validation says mirror images keep every head's meaning."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mhc.api import train
from mhc.cli.train import measured
from mhc.errors import ConfigError
from mhc.data.augment import Augmentation
from mhc.training.flips import FlipCheck


def square_images(folder: Path, n: int = 160, side: int = 16) -> Path:
    """A square on the left or the right half, bright or dim: ``side`` (which half: a mirror
    image swaps it) and ``lit`` (how bright: a mirror image keeps it)."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        right, lit = i % 2, (i // 2) % 2
        pixels = rng.integers(0, 40, (side, side, 3), dtype=np.uint8)
        pixels[4:12, (side // 2) * right + 2:(side // 2) * right + 6] += 200 if lit else 70
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "side": "b" if right else "a", "lit": "yes" if lit else "no"})
    for split, part in (("train", rows[: n * 3 // 4]), ("val", rows[n * 3 // 4:])):
        pd.DataFrame(part).to_csv(folder / f"{split}.csv", index=False)
    return folder


@pytest.mark.parametrize("ignored, flips", [([], False), (["side"], True)])
def test_flips_start_only_where_mirror_images_keep_every_heads_meaning(tmp_path, caplog, ignored, flips):
    folder = square_images(tmp_path / "data")
    overrides = ["data=manifest", f"data.train={folder / 'train.csv'}", f"data.val={folder / 'val.csv'}",
                 f"data.test={folder / 'val.csv'}", "data.image_size=[16,16]", f"data.ignore_columns=[{','.join(ignored)}]",
                 "augment=standard", "augment.where=device", "augment.hflip_check=true", "tta=flip",
                 "data.batch_size=16", "trainer.max_epochs=4", "optimizer.lr=0.005", "~callbacks.progress_bar"]
    with caplog.at_level(logging.INFO, logger="mhc.training.flips"):
        result = train(overrides, output_dir=tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("augment.hflip_check")]
    assert len(lines) == 1  # decided once, at the first validation
    if flips:
        assert "flips on from now (augment.hflip=0.5): lit score the same on mirror images" in lines[0]
    else:
        assert "no flips in this run, nor flip TTA: side keeps" in lines[0] and "lit" not in lines[0].split(":")[1]
    saved = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["callbacks"]
    assert saved["FlipCheck"] == {"flips": flips}  # a resumed run keeps the decision
    assert result.metrics["val"]["lit"]["acc"] > 0.9
    assert result.tta == ("flip" if flips else None)  # the test's table says it (mhc.cli.train.measured)
    assert measured(result, "test") == (" (with flip TTA, as mhc-eval tta=flip)" if flips else "")
    assert measured(result, "val") == ""


class Module:
    """What FlipCheck reads of a module: its tasks and its batch augmentation."""

    def __init__(self, tasks):
        self.tasks = {t.name: t for t in tasks}
        self.augmentation = Augmentation(hflip=0.5, where="device", hflip_check=True, tasks=tasks)


def test_a_resumed_decision_is_applied_and_tta_follows_it(tasks):
    check = FlipCheck()
    check.load_state_dict({"flips": False})
    module = Module(tasks)
    trainer = type("Trainer", (), {"datamodule": None})()
    check.on_fit_start(trainer, module)
    assert module.augmentation.hflip == 0.0 and check.tta("flip") is None
    check.load_state_dict({"flips": True})
    check.on_fit_start(trainer, module)
    assert module.augmentation.hflip == 0.5 and check.tta("flip") == "flip"  # the configured probability, kept


def test_the_check_turns_flips_on_during_training_so_needs_batch_augmentation():
    with pytest.raises(ConfigError, match="augment.hflip_check .* set augment.where=device"):
        Augmentation(hflip=0.5, where="loader", hflip_check=True)
