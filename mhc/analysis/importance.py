"""Head importance per task (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

Every head's output is multiplied by a gate xi_h = 1; its importance for a task is the
expected absolute sensitivity of that task's loss to the gate, I_h = E_x |dL(x)/dxi_h|,
normalised per layer (L2 norm over the layer's heads) so that layers compare.

The gates are per sample: a hook multiplies each head's output by a [B, H] tensor of ones, so
one backward pass per task gives dL(x)/dxi_h for every sample x of the batch, exactly (a
batch-level gate would give |E_x dL/dxi| instead, which cancels across samples).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from mhc.analysis.attention import HeadLayout
from mhc.data.labels import batch_inputs
from mhc.errors import ConfigError
from mhc.losses import batch_losses
from mhc.model.backbones.base import ATTENTION
from mhc.model.net import MultiHeadNet


def transformer_encoder(net: MultiHeadNet) -> nn.Module:
    """The attention encoder of a transformer backbone; a clear error for other backbones."""
    if not net.backbone.supports(ATTENTION):
        raise ConfigError(f"backbone '{net.backbone_config['name']}' is not a transformer; attention analysis needs a model "
                          "that shows its attention (vit_*, seq_*, a timm ViT, or a Hugging Face encoder)")
    return net.backbone.encoder


@contextmanager
def sample_gates(encoder: nn.Module, batch_size: int, device: torch.device) -> Iterator[list[Tensor]]:
    """Per-sample head gates [B, H] (ones, requiring grad) applied to every layer's head outputs."""
    gates, handles = [], []
    for block in encoder.blocks:
        attn = block.attn
        gate = torch.ones(batch_size, attn.num_heads, device=device, requires_grad=True)

        def scale(module: nn.Module, args: tuple[Tensor, ...], gate: Tensor = gate, attn: nn.Module = attn) -> tuple[Tensor]:
            heads = args[0].unflatten(-1, (attn.num_heads, attn.head_dim))  # [B, L, H, d]
            return ((heads * gate[:, None, :, None]).flatten(-2),)

        handles.append(attn.out.register_forward_pre_hook(scale))
        gates.append(gate)
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def normalise_per_layer(scores: Tensor) -> Tensor:
    """Divide each layer's scores [layers, heads] by their L2 norm (NaN for pruned heads kept)."""
    norm = torch.nan_to_num(scores).norm(dim=-1, keepdim=True)
    return scores / norm.clamp(min=1e-20)


def head_importance(
    net: MultiHeadNet, batches: Iterable[Mapping[str, Any]], normalise: bool = True
) -> dict[str, Tensor]:
    """Importance [layers, heads] per task (NaN where a head is pruned), averaged over the
    samples labelled for that task. The network's weights and mode are left as they were."""
    encoder = transformer_encoder(net)
    layout = HeadLayout.of(encoder)
    device = next(net.parameters()).device
    totals = {name: [torch.zeros(len(heads)) for heads in layout.kept] for name in net.tasks}
    counts = dict.fromkeys(net.tasks, 0)
    was_training = net.training
    net.eval()
    try:
        for batch in batches:
            batch = move(batch, device)
            inputs = batch_inputs(batch)
            with sample_gates(encoder, len(inputs), device) as gates:
                losses = batch_losses(net.tasks, net.hierarchy, net(inputs), batch)
                for name, loss in losses.items():
                    labelled = int(batch["label_mask"][name].sum())
                    if not labelled:
                        continue
                    # The loss is a mean over labelled samples; times their count it is a sum,
                    # so each sample's gate gradient is that sample's own dL/dxi.
                    grads = torch.autograd.grad(loss * labelled, gates, retain_graph=True)
                    for layer, grad in enumerate(grads):
                        totals[name][layer] += grad.abs().sum(0).detach().cpu()
                    counts[name] += labelled
    finally:
        net.train(was_training)
    scores = {}
    for name, per_layer in totals.items():
        if counts[name]:
            values = layout.scatter([t / counts[name] for t in per_layer])
            scores[name] = normalise_per_layer(values) if normalise else values
    return scores


def combined_importance(scores: Mapping[str, Tensor], task: str | None = None, reduce: str = "max") -> Tensor:
    """One ranking of the heads for the whole model from per-task scores [layers, heads].

    ``max`` (default): a head counts as much as it matters to the task that needs it most, so a
    head one task relies on is never pruned for being idle in the others; ``mean``: the
    average over tasks. ``task`` ranks by that task's scores alone.
    """
    if task is not None:
        if task not in scores:
            raise ValueError(f"no importance for task '{task}'; tasks measured: {sorted(scores)}")
        return scores[task]
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got '{reduce}'")
    stacked = torch.stack(list(scores.values()))
    return stacked.amax(0) if reduce == "max" else stacked.mean(0)


def move(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A loader batch (nested dicts of tensors) on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: move(v, device) for k, v in batch.items()}
    return batch
