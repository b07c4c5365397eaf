"""How a training batch becomes an update: task losses, the weighting method, and the manual
optimisation that gradient methods need.

:class:`MultiTaskStep` holds what a step needs besides the network and the Lightning module:
the tasks, the :mod:`mhc.weighting` method, where gradient methods take task gradients, and,
for those methods (which step the optimizer themselves), gradient accumulation and clipping.
The arithmetic of one update is in :mod:`mhc.training.balancing`.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor

from mhc.data.labels import batch_inputs
from mhc.errors import ConfigError, NonFiniteLossError
from mhc.losses import batch_losses
from mhc.model.net import MultiHeadNet
from mhc.tasks import TaskSpec
from mhc.training.balancing import BalancedStep, gradient_cosines, gradient_step, loss_step
from mhc.weighting import Weighting


def static_loss(tasks: Mapping[str, TaskSpec], losses: Mapping[str, Tensor]) -> Tensor:
    """``sum(task.weight * loss)``: what ``train/loss``, ``val/loss`` and ``test/loss`` report,
    whatever the weighting method trains with."""
    return sum(tasks[name].weight * loss for name, loss in losses.items())


def checked(module: pl.LightningModule, losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """``losses`` if all are finite; otherwise :class:`NonFiniteLossError` naming the task and
    step (every process agrees, so none is left waiting in a collective)."""
    bad = [name for name, loss in losses.items() if not bool(torch.isfinite(loss.detach()).all())]
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return losses
        bad = bad or ["(another process)"]
    if not bad:
        return losses
    value = float(losses[bad[0]].detach()) if bad[0] in losses else float("nan")
    where = f"step {module.global_step} (epoch {module.current_epoch})" if trainer is not None else "this step"
    raise NonFiniteLossError(f"the loss of task '{bad[0]}' is {value} at {where}")


class MultiTaskStep:
    """One training step of a multi-task module: see the module docstring.

    Args:
        tasks: the tasks, in head order.
        weighting: the method that turns task losses (or gradients) into one update.
        gradients_of: ``representation`` or ``parameters``: where gradient methods take the
            task gradients.
        accumulate_grad_batches, gradient_clip_val: for gradient methods, which step the
            optimizer themselves (Lightning's own settings apply to loss methods).
        conflict_every: every this many steps, measure the pairwise cosine similarity of the
            task gradients on the shared representation (0: never; ``None``: on the steps
            Lightning writes logs).
    """

    def __init__(self, tasks: Mapping[str, TaskSpec], weighting: Weighting, gradients_of: str = "representation",
                 accumulate_grad_batches: int = 1, gradient_clip_val: float | None = None,
                 conflict_every: int | None = None) -> None:
        if weighting.needs_grads and gradients_of == "representation" and not weighting.representation_ok:
            raise ConfigError(f"weighting={weighting.name} is defined on parameter gradients only; set weighting.grads=parameters")
        self.tasks = dict(tasks)
        self.names = list(tasks)
        self.weighting = weighting
        self.gradients_of = gradients_of
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.gradient_clip_val = gradient_clip_val
        self.conflict_every = conflict_every

    @property
    def manual(self) -> bool:
        """Whether the module steps the optimizer itself (gradient methods)."""
        return self.weighting.needs_grads

    def losses(self, net: MultiHeadNet, logits: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Each head's loss, with output masks from the parents' labels and as the data gives them."""
        return batch_losses(self.tasks, net.hierarchy, logits, batch)

    def __call__(self, module: pl.LightningModule, net: MultiHeadNet, batch: Mapping[str, Any]) -> BalancedStep:
        """The weighting method's step on a batch; losses are checked before the method sees
        them, so its state never takes a NaN."""
        features = net.forward_features(batch_inputs(batch))
        mask = batch["label_mask"]
        if self.weighting.needs_grads:
            return gradient_step(self.weighting, self.names, features, net.forward_heads,
                                 lambda logits: checked(module, self.losses(net, logits, batch)), mask,
                                 shared=list(net.backbone.parameters()), gradients_of=self.gradients_of)
        logits = net.forward_heads(features)
        step = loss_step(self.weighting, self.names, checked(module, self.losses(net, logits, batch)), logits, mask)
        if self.logs_conflict(module) and len(step.present) > 1:
            step.grads = torch.stack([
                torch.autograd.grad(step.losses[t], features, retain_graph=True)[0].reshape(-1) for t in step.present
            ])
        return step

    def update(self, module: pl.LightningModule, objective: Tensor | None, batch_idx: int) -> None:
        """Manual optimisation: backward, and every ``accumulate_grad_batches`` batches (and at
        the epoch's last) a clipped optimizer step and a schedule step."""
        optimizer = module.optimizers()
        if objective is not None:
            module.manual_backward(objective / self.accumulate_grad_batches)
        if (batch_idx + 1) % self.accumulate_grad_batches and not module.trainer.is_last_batch:
            return
        if self.gradient_clip_val:
            module.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler = module.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def logs_conflict(self, module: pl.LightningModule) -> bool:
        """Whether this step measures gradient conflict: Lightning writes step logs after global
        steps ``n - 1, 2n - 1, ...``, so the measurement lands on those."""
        every = self.conflict_every
        if every is None:
            every = module.trainer.log_every_n_steps if module._trainer is not None else 0
        return bool(every) and (module.global_step + 1) % every == 0

    def log(self, module: pl.LightningModule, step: BalancedStep) -> None:
        """Per-task weights every step; gradient conflict (pairwise cosine) when the gradients are at hand."""
        if step.weights:
            module.log_dict({f"train/weight/{t}": w for t, w in step.weights.items()}, on_step=True, on_epoch=False)
        if step.grads is None or len(step.present) < 2 or not self.logs_conflict(module):
            return
        cosines = gradient_cosines(step.grads)
        pairs = torch.triu_indices(len(step.present), len(step.present), offset=1)
        values = cosines[pairs[0], pairs[1]]
        scalars = {"train/conflict/mean_cosine": values.mean(), "train/conflict/negative_fraction": (values < 0).float().mean()}
        if len(step.present) <= 8:
            scalars.update({f"train/conflict/{step.present[i]}~{step.present[j]}": cosines[i, j]
                            for i, j in pairs.T.tolist()})
        module.log_dict(scalars, on_step=True, on_epoch=False)
