"""``experiment=auto``: a recipe chosen from the data (:mod:`mhc.data.profile`).

A recipe tuned at one size fails at another: a schedule of a fixed number of epochs gives 300
optimizer steps on 4,000 samples and 5,000 on 60,000, and SGD at a learning rate of 0.1 that
converges in the second barely leaves the priors in the first. The rules here are written in
what transfers: a minimum number of optimizer steps whatever the size, AdamW (stable at every
size without a tuned learning rate), batches that shrink with the data, a vocabulary that grows
with it, and thresholds tuned on validation for the heads whose decision rule is a threshold.

Every choice is a config key set before anything is built; a key the command line sets
(``experiment=auto trainer.max_epochs=30``) is kept as given. The run logs one line saying what
was chosen and why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mhc.config import config_dir
from mhc.data.profile import DataProfile

log = logging.getLogger(__name__)

AUTO = "auto"
IMAGE_STEPS = 2000  # optimizer steps every image run gets at least
IMAGE_EPOCHS = (20, 50)  # and passes over its images: at least 20 (larger sets need as many as small ones), at most 50
TEXT_STEPS = 3000
MAX_TEXT_LENGTH = 256  # tokens: longer texts are cut (their first 256 tokens)
MAX_VOCABULARY = 16384  # WordPiece ids
DOCUMENT_WORDS = 100  # texts of more words than this (90th percentile) are documents: a bag of embeddings
SMALL_IMAGE = 40  # px: up to this side the network keeps the full resolution (airbench); above, a stride-2 stem
VALIDATIONS = 8  # about this many validations a run (the checkpoint is chosen among them)


@dataclass
class Recipe:
    """Config keys to set (``backbone`` is a whole option of the group) and why."""

    choices: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any) -> None:
        self.choices[key] = value


def clamp(value: float, low: int, high: int) -> int:
    return int(min(high, max(low, value)))


def epochs_for(samples: int, batch_size: int, min_steps: int, low: int, high: int) -> tuple[int, int]:
    """``(epochs, validate every)``: at least ``min_steps`` optimizer steps within ``[low, high]``
    epochs, validated about :data:`VALIDATIONS` times (the epochs a multiple of the interval, so
    the last one is validated)."""
    per_epoch = max(1, math.ceil(samples / batch_size))
    epochs = clamp(math.ceil(min_steps / per_epoch), low, high)
    every = max(1, epochs // VALIDATIONS)
    rounded = math.ceil(epochs / every) * every
    return (rounded if rounded <= high else rounded - every), every


def schedule(recipe: Recipe, samples: int, batch: int, epochs: int, every: int) -> None:
    """The batch size, epochs and validation interval; training losses logged at least once an epoch."""
    recipe.set("data.batch_size", batch)
    recipe.set("trainer.max_epochs", epochs)
    recipe.set("trainer.check_val_every_n_epoch", every)
    recipe.set("trainer.log_every_n_steps", clamp(math.ceil(samples / batch), 1, 20))


def image_recipe(profile: DataProfile) -> Recipe:
    """Images from scratch: the airbench network for small ones (:data:`SMALL_IMAGE` px and under),
    else the compact CNN, whose stride-2 stem halves the resolution first (on 2 CPU cores it trained
    64-px faces to the hand-written ResNet-9's accuracy in a fraction of its time), AdamW with warm-up and cosine decay, pad-and-crop and
    horizontal flips unless a head's classes say left or right or validation says mirror images
    mean something else (:mod:`mhc.training.flips`), label smoothing."""
    recipe = Recipe()
    side = max(profile.image_size or (64, 64))
    samples = profile.samples
    batch = 64 if samples < 10_000 else 128 if samples < 30_000 else 256
    epochs, every = epochs_for(samples, batch, IMAGE_STEPS, *IMAGE_EPOCHS)
    if side <= SMALL_IMAGE:
        recipe.set("backbone", {**group_option("backbone", "airbench"), "widths": [32, 64, 128]})
        recipe.reasons.append(f"airbench [32, 64, 128] for {side}-px images")
        if not torch.cuda.is_available():
            recipe.set("trainer.precision", "32-true")  # bf16 autocast is slower for a network this small on a CPU
    else:
        recipe.set("backbone", group_option("backbone", "cnn"))
        recipe.reasons.append(f"the compact CNN (stride-2 stem) for {side}-px images")
    schedule(recipe, samples, batch, epochs, every)
    recipe.reasons.append(f"{epochs} epochs of {math.ceil(samples / batch)} steps at batch {batch} "
                          f"(at least {IMAGE_STEPS} steps and {IMAGE_EPOCHS[0]} epochs), validated every {every}")
    recipe.set("optimizer", {**group_option("optimizer", "adamw"), "lr": 0.002, "weight_decay": 0.05})
    recipe.set("scheduler", group_option("scheduler", "cosine"))
    recipe.reasons.append("AdamW lr 2e-3, 5% warm-up then cosine")
    mirrored = profile.mirrored_heads
    recipe.set("augment", {**group_option("augment", "standard"), "crop": "pad", "padding": max(1, round(side / 16)),
                           "where": "device", "hflip": 0.0 if mirrored else 0.5, "hflip_check": not mirrored})
    recipe.set("tta", None if mirrored else "flip")
    recipe.reasons.append(f"pad-and-crop, no flips ({', '.join(mirrored)}: classes named left/right)" if mirrored
                          else "pad-and-crop, and flips once the first validation says mirror images mean the same "
                               "(then flip TTA on the test)")
    recipe.set("loss.label_smoothing", 0.1)
    recipe.set("head.bias_init", "prior")
    return recipe


def text_recipe(profile: DataProfile) -> Recipe:
    """Texts from scratch: a WordPiece vocabulary fitted to the training texts; the text CNN (Kim
    2014) for short texts, a bag of token embeddings weighted by learned weights (fastText) for
    documents (:data:`DOCUMENT_WORDS`); AdamW with warm-up and cosine decay, at least
    :data:`TEXT_STEPS` steps; multilabel heads sum their labels' losses, weigh positives at the
    square root of the balanced weights and take per-class thresholds tuned on validation for F1
    (``calibrate=true``)."""
    recipe = Recipe()
    samples = profile.samples
    documents = (profile.words or 0) > DOCUMENT_WORDS
    # A short text's class turns on a few words in order, read by convolutions whose embeddings a
    # small vocabulary keeps well trained; a document's topic lies in its rarer words.
    vocabulary = MAX_VOCABULARY if documents else clamp(2 ** round(math.log2(max(2, samples / 2))), 2048, MAX_VOCABULARY)
    recipe.set("data.tokenizer", "wordpiece")
    recipe.set("data.max_size", vocabulary)
    recipe.set("data.min_count", 2)
    length = text_length(profile.words)
    recipe.set("data.max_length", length)
    recipe.reasons.append(f"WordPiece of up to {vocabulary:,} ids for {samples:,} texts, {length} tokens")
    if documents:
        recipe.set("backbone", {**group_option("backbone", "bag"), "dim": 128})
        recipe.reasons.append(f"documents (90% of texts within {profile.words:,} words, over {DOCUMENT_WORDS}): "
                              "a bag of token embeddings weighted by learned weights")
        lr = 0.005
    else:
        recipe.set("backbone", {**group_option("backbone", "textcnn"), "dim": 128, "filters": 128, "dropout": 0.5})
        recipe.reasons.append("the text CNN (widths 1-4, 128 filters)")
        lr = 0.001
    batch = 32
    epochs, every = epochs_for(samples, batch, TEXT_STEPS, 5, 30)
    schedule(recipe, samples, batch, epochs, every)
    recipe.set("trainer.gradient_clip_val", 1.0)
    recipe.reasons.append(f"{epochs} epochs of {math.ceil(samples / batch)} steps at batch {batch} (at least {TEXT_STEPS} steps)")
    recipe.set("optimizer", {**group_option("optimizer", "adamw"), "lr": lr, "weight_decay": 0.01})
    recipe.set("scheduler", group_option("scheduler", "cosine"))
    recipe.reasons.append(f"AdamW lr {lr:g}, 5% warm-up then cosine")
    recipe.set("augment", group_option("augment", "none"))
    recipe.set("head.bias_init", "prior")
    recipe.set("loss.pos_weight", "balanced")
    recipe.set("loss.balanced_power", 0.5)
    recipe.set("loss.label_reduction", "sum")
    multilabel = [head.name for head in profile.heads if head.kind == "multilabel"]
    if multilabel:
        for name in multilabel:
            recipe.set(f"tasks.{name}.threshold", "f1")
        recipe.set("calibrate", True)
        recipe.reasons.append(f"thresholds tuned on validation for {', '.join(multilabel)}")
    return recipe


def text_length(words: int | None) -> int:
    """Tokens kept of each text: a power of two covering 90% of the training texts (about 1.3
    WordPiece tokens a word), from 64 to :data:`MAX_TEXT_LENGTH` (the text CNN's cost grows with it)."""
    if not words:
        return 64
    return clamp(2 ** math.ceil(math.log2(max(1.0, 1.3 * words))), 64, MAX_TEXT_LENGTH)


def choose(profile: DataProfile) -> Recipe:
    return text_recipe(profile) if profile.inputs == "text" else image_recipe(profile)


def group_option(group: str, name: str) -> dict[str, Any]:
    """A packaged option of a config group as plain data (its own ``defaults`` list left out)."""
    node = OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{name}.yaml"), resolve=False)
    node.pop("defaults", None)
    return node


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The config keys that command-line overrides set: ``+a.b=1`` and ``a.b=1`` give ``a.b``,
    ``backbone=resnet18`` gives ``backbone``; ``~key`` removes it, so it counts as set."""
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra"):
            keys.add(key.split("@", 1)[0])
    return keys


def given_keys(overrides: Sequence[str] | None) -> set[str]:
    """The keys the user set: ``overrides`` (the API's list), else the Hydra command line."""
    if overrides is not None:
        return override_keys(overrides)
    if HydraConfig.initialized():
        return override_keys(HydraConfig.get().overrides.task)
    return set()


def is_given(key: str, given: set[str]) -> bool:
    """A choice is the user's when they set it or a key above it (``backbone=...`` for ``backbone.widths``)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in given for i in range(1, len(parts) + 1))


def apply_recipe(cfg: DictConfig, recipe: Recipe, given: set[str]) -> DictConfig:
    """``cfg`` with the recipe's choices, except those the user gave; a whole group option
    chosen (``backbone``) keeps the options the user set inside it (``backbone.widths=...``)."""
    cfg = cfg.copy()
    for key, value in recipe.choices.items():
        if is_given(key, given):
            continue
        if isinstance(value, dict):
            value = OmegaConf.create(value)
            for inside in sorted(k for k in given if k.startswith(key + ".")):
                OmegaConf.update(value, inside[len(key) + 1:], OmegaConf.select(cfg, inside), force_add=True)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


def auto_config(cfg: DictConfig, profile: DataProfile, overrides: Sequence[str] | None = None) -> DictConfig:
    """``recipe=auto``: ``cfg`` with what :func:`choose` picks for the data, and the one line that says so."""
    recipe = choose(profile)
    given = given_keys(overrides)
    kept = sorted(k for k in given if any(is_given(c, {k}) or k.startswith(c + ".") for c in recipe.choices))
    log.info(f"experiment=auto: {profile.describe()}: {'; '.join(recipe.reasons)}"
             + (f" (kept as given: {', '.join(kept)})" if kept else ""))
    cfg = apply_recipe(cfg, recipe, given)
    epochs = cfg.trainer.max_epochs
    if "trainer.check_val_every_n_epoch" not in given and epochs % cfg.trainer.check_val_every_n_epoch:
        cfg.trainer.check_val_every_n_epoch = 1  # epochs given on the command line: the last one still validated
    return cfg
