"""experiment=auto: the data profile, the choices it makes at each size, the command line kept, a run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mhc.api import compose_config, train
from mhc.api.build import build_datamodule
from mhc.api.recipe import IMAGE_EPOCHS, apply_recipe, auto_config, choose, epochs_for, override_keys, text_length
from mhc.data.profile import DataProfile, HeadProfile, profile_data


def image_manifest(folder: Path, n: int, side: int = 16, direction: bool = False) -> Path:
    """``n`` images of a bright square on the left or right half, labelled by its side (and,
    with ``direction``, a task whose classes say left and right)."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        right = i % 2
        pixels = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
        pixels[:, (side // 2) * right:(side // 2) * (right + 1)] += 150
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        row = {"image": f"img/{i}.png", "bright": "yes" if right else "no", "group": "abc"[i % 3] if i % 5 else ""}
        if direction:
            row["arrow"] = "left" if right else "right"
        rows.append(row)
    for split, part in (("train", rows[: n * 3 // 4]), ("val", rows[n * 3 // 4:])):
        pd.DataFrame(part).to_csv(folder / f"{split}.csv", index=False)
    return folder


def profile(inputs: str, samples: int, side: int = 32, kinds=("multiclass",), mirrored=False,
            words: int | None = None) -> DataProfile:
    heads = tuple(HeadProfile(f"t{i}", kind, 4, samples, samples // 8, mirrored) for i, kind in enumerate(kinds))
    return DataProfile(inputs, samples, (side, side) if inputs == "image" else None, heads, words)


def test_profile_reads_samples_labels_and_mirrored_classes(tmp_path):
    folder = image_manifest(tmp_path, 40, direction=True)
    cfg = compose_config("train", ["data=manifest", f"data.train={folder / 'train.csv'}", "data.image_size=[16,16]"],
                         output_dir=tmp_path / "run")
    datamodule = build_datamodule(cfg)
    found = profile_data(datamodule)
    before = datamodule.train_labels(datamodule.task_specs())
    datamodule.setup("train")  # built: the split's own labels, the same as the manifest's columns
    after = datamodule.train_labels(datamodule.task_specs())
    assert all(np.array_equal(before[t], after[t]) for t in before)
    assert (found.inputs, found.samples, found.image_size) == ("image", 30, (16, 16))
    heads = {h.name: h for h in found.heads}
    assert heads["bright"].labelled == 30 and heads["bright"].rarest == 15
    assert heads["group"].labelled == 24  # one row in five has no group label
    assert found.mirrored_heads == ["arrow"]
    assert "30 training samples at 16x16" in found.describe()


@pytest.mark.parametrize("samples", [300, 2_000, 8_000, 45_000, 200_000])
def test_every_size_gets_enough_steps_and_a_validated_last_epoch(samples):
    recipe = choose(profile("image", samples))
    epochs, every, batch = (recipe.choices[k] for k in ("trainer.max_epochs", "trainer.check_val_every_n_epoch",
                                                         "data.batch_size"))
    steps = epochs * -(-samples // batch)
    assert steps >= 2000 or epochs > 50 - every
    assert epochs % every == 0 and IMAGE_EPOCHS[0] <= epochs <= IMAGE_EPOCHS[1]
    assert recipe.choices["optimizer"]["_target_"] == "torch.optim.AdamW"


def test_epochs_for_keeps_the_minimum_steps_within_bounds():
    assert epochs_for(2000, 64, 1000, 12, 50) == (32, 4)  # 32 steps an epoch: 1,000 steps
    assert epochs_for(45_000, 256, 1000, 12, 50) == (12, 1)
    assert epochs_for(100, 64, 1000, 12, 50) == (48, 6)  # at most 50 epochs, the last one validated


def test_mirrored_classes_turn_flips_off():
    flipping, mirrored = choose(profile("image", 4000)), choose(profile("image", 4000, mirrored=True))
    assert flipping.choices["augment"]["hflip"] == 0.5 and flipping.choices["tta"] == "flip"
    assert mirrored.choices["augment"]["hflip"] == 0.0 and mirrored.choices["tta"] is None
    assert "no flips" in "; ".join(mirrored.reasons)


def test_text_vocabulary_and_epochs_grow_with_the_data():
    small, large = choose(profile("text", 4000, kinds=("multilabel",))), choose(profile("text", 40_000))
    assert small.choices["data.max_size"] < large.choices["data.max_size"] <= 16384
    assert small.choices["trainer.max_epochs"] > large.choices["trainer.max_epochs"]
    assert small.choices["calibrate"] is True and small.choices["tasks.t0.threshold"] == "f1"
    assert "calibrate" not in large.choices  # no multilabel head: no thresholds to tune


def test_documents_get_a_bag_of_embeddings_over_a_full_vocabulary():
    short, documents = choose(profile("text", 4000, words=40)), choose(profile("text", 4000, words=300))
    assert short.choices["backbone"]["name"] == "textcnn" and short.choices["data.max_size"] == 2048
    assert documents.choices["backbone"]["name"] == "bag" and documents.choices["data.max_size"] == 16384
    assert documents.choices["data.max_length"] == 256 and documents.choices["optimizer"]["lr"] == 0.005
    assert "documents (90% of texts within 300 words, over 100)" in "; ".join(documents.reasons)


def test_override_keys_read_groups_options_and_removals():
    assert override_keys(["backbone=resnet18", "+data.tasks.a.kind=binary", "~callbacks.progress_bar",
                          "trainer.max_epochs=3", "hydra.run.dir=x"]) == {
        "backbone", "data.tasks.a.kind", "callbacks.progress_bar", "trainer.max_epochs"}


def test_the_command_line_wins_over_the_recipe(tmp_path):
    overrides = ["experiment=auto", "trainer.max_epochs=2", "backbone.widths=[8,16,24]"]
    cfg = compose_config("train", overrides, output_dir=tmp_path)
    chosen = apply_recipe(cfg, choose(profile("image", 4000)), override_keys(overrides))
    assert chosen.trainer.max_epochs == 2
    assert chosen.backbone.name == "airbench" and list(chosen.backbone.widths) == [8, 16, 24]  # chosen, with the user's widths
    assert chosen.data.batch_size == 64 and chosen.optimizer.lr == 0.002


def test_auto_trains_and_logs_one_line(tmp_path, caplog):
    folder = image_manifest(tmp_path / "data", 48)
    overrides = ["experiment=auto", f"data.train={folder / 'train.csv'}", f"data.val={folder / 'val.csv'}",
                 "data.image_size=[16,16]", "trainer.max_epochs=2", "backbone.widths=[8,8,8]", "~callbacks.progress_bar"]
    with caplog.at_level(logging.INFO, logger="mhc.api.recipe"):
        result = train(overrides, output_dir=tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("experiment=auto")]
    assert len(lines) == 1 and "image data, 36 training samples at 16x16" in lines[0]
    assert "kept as given: backbone.widths, trainer.max_epochs" in lines[0]
    assert result.best_checkpoint is not None and set(result.metrics["val"]) == {"bright", "group"}


def test_auto_config_of_a_text_manifest(tmp_path):
    rows = pd.DataFrame({"text": [f"word{i % 7} and more {i}" for i in range(40)],
                         "tags": ["a|b" if i % 3 else "b" for i in range(40)]})
    rows.to_csv(tmp_path / "train.csv", index=False)
    overrides = ["experiment=auto", f"data.train={tmp_path / 'train.csv'}"]
    cfg = compose_config("train", overrides, output_dir=tmp_path / "run")
    found = profile_data(build_datamodule(cfg))
    assert found.words == 4 and "(90% within 4 words)" in found.describe()
    chosen = auto_config(cfg, found, overrides)
    assert chosen.backbone.name == "textcnn" and chosen.data.tokenizer == "wordpiece" and chosen.data.max_length == 64
    assert chosen.tasks.tags.threshold == "f1" and chosen.calibrate is True


def test_texts_are_kept_to_a_power_of_two_covering_most_of_them():
    assert text_length(None) == 64 and text_length(12) == 64  # short comments, tweets
    assert text_length(90) == 128 and text_length(150) == 256  # posts: 1.3 tokens a word
    assert text_length(5000) == 256  # long documents are cut
