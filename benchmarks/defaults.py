"""The training setup ``mhc-train`` uses by default on this machine's CPU
(``trainer.accelerator=cpu``), for benchmarks that time steps outside Lightning: the trainer's
precision as an autocast context, and the speed options."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch

from mhc.data import ScenesDataModule
from mhc.losses import batch_losses
from mhc.model import MultiHeadNet
from mhc.training.precision import default_precision
from mhc.training.speed import apply_speed_options


def bf16_autocast(enabled: bool) -> ContextManager:
    """What Lightning's ``bf16-mixed`` does on CPU around the forward pass and losses (or nothing)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def cpu_default_precision(backbone: str = "cnn") -> str:
    """``trainer.precision`` of a CPU run of ``backbone`` by default (``${mhc.precision:cpu,<backbone>}``)."""
    return default_precision("cpu", backbone)


def default_autocast(backbone: str = "cnn") -> ContextManager:
    """bf16 autocast where ``backbone``'s default CPU precision is bf16-mixed, else nothing."""
    return bf16_autocast(cpu_default_precision(backbone) == "bf16-mixed")


def as_trained(net: MultiHeadNet) -> MultiHeadNet:
    """``net`` with the default speed options (channels_last for a CNN, fused heads)."""
    apply_speed_options(net)
    return net


def describe(backbone: str = "cnn") -> str:
    return f"precision {cpu_default_precision(backbone)}, default speed options"


def scenes_batch(batch_size: int) -> tuple[list[Any], dict[str, Any]]:
    """The generated scenes' tasks and one shuffled training batch of ``batch_size`` (seed 0)."""
    data = ScenesDataModule(num_train=batch_size, num_val=10, num_test=10, batch_size=batch_size, seed=0)
    data.set_tasks(data.task_specs())
    return data.tasks, next(iter(data.loader("train", shuffle=True)))


def adamw_step(net: MultiHeadNet, batch: dict[str, Any], autocast: ContextManager | None = None) -> Callable[[], None]:
    """One training step of ``net`` on ``batch`` (forward, masked losses, backward, AdamW), as a call."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast or contextlib.nullcontext():
            losses = batch_losses(net.tasks, net.hierarchy, net(batch["image"]), batch)
        sum(losses.values()).backward()
        optimizer.step()

    return step
