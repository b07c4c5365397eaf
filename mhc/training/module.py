"""The LightningModule that trains a :class:`~mhc.model.MultiHeadNet`.

It owns the training logic only: masked per-task losses, their static weighting, per-head
metrics, the optimizer and schedule, and what a checkpoint carries. The network is rebuilt
from plain data (``net_config``), so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from mhc.data.labels import batch_inputs
from mhc.io import CHECKPOINT_FORMAT, load
from mhc.losses import batch_losses
from mhc.metrics import HeadMetrics, flatten_results
from mhc.model.net import MultiHeadNet
from mhc.pretrain import build_objective
from mhc.training.schedules import optimization

STAGES = ("train", "val", "test")
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class MultiHeadModule(pl.LightningModule):
    """Trains a shared backbone with one head per task.

    Args:
        net_config: ``MultiHeadNet.config()``-style plain data (backbone, tasks, preprocess).
        optimizer: factory ``optimizer(params) -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: optional factory ``scheduler(optimizer[, total_steps]) -> LRScheduler``,
            stepped every optimizer step.
        confusion: collect per-head confusion matrices during validation and test.
        auxiliary: ``{name: {"objective", "weight", "options"}}``: masked-modeling losses (see
            :func:`mhc.pretrain.build_objective`) added to the heads' weighted sum.
    """

    def __init__(
        self,
        net_config: Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        confusion: bool = True,
        auxiliary: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"net_config": dict(net_config), "auxiliary": dict(auxiliary or {})})
        self.net = MultiHeadNet.from_config(net_config)
        self.tasks = self.net.tasks
        # Masked-modeling objectives trained alongside the heads, on every batch, labelled or not.
        self.auxiliary = torch.nn.ModuleDict(
            {name: build_objective(self.net, spec["objective"], spec.get("options")) for name, spec in (auxiliary or {}).items()}
        )
        self.auxiliary_weights = {name: float(spec.get("weight", 1.0)) for name, spec in (auxiliary or {}).items()}
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.metrics = torch.nn.ModuleDict(
            {f"{stage}_": HeadMetrics(self.tasks, confusion=confusion and stage != "train") for stage in STAGES}
        )
        self.last_results: dict[str, dict[str, dict[str, float]]] = {}

    def stage_metrics(self, stage: str) -> HeadMetrics:
        return self.metrics[f"{stage}_"]  # ModuleDict keys may not shadow Module attributes ("train")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.net(images)

    # -- losses -----------------------------------------------------------------------------
    def task_losses(self, logits: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Each head's loss, with output masks from the parents' labels and as the data gives them."""
        return batch_losses(self.tasks, self.net.hierarchy, logits, batch)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Static weighting: sum of ``task.weight * loss``."""
        return sum(self.tasks[name].weight * loss for name, loss in losses.items())

    # -- steps ------------------------------------------------------------------------------
    def _shared_step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        inputs = batch_inputs(batch)
        logits = self.net(inputs)
        losses = self.task_losses(logits, batch)
        total = self.combine(losses)
        for name, objective in self.auxiliary.items():
            auxiliary = objective(self.net.backbone_input(inputs)).loss
            total = total + self.auxiliary_weights[name] * auxiliary
            self.log(f"{stage}/{name}/loss", auxiliary, on_step=False, on_epoch=True, batch_size=inputs.shape[0],
                     sync_dist=stage != "train")
        probs = self.net.probabilities({k: v.detach() for k, v in logits.items()}, batch.get("allowed"))
        # Per-task losses are averaged over each task's labelled samples by the stage metrics.
        self.stage_metrics(stage).update(probs, batch["targets"], batch["label_mask"], losses)
        training = stage == "train"
        self.log(f"{stage}/loss", total, prog_bar=True, on_step=training, on_epoch=True,
                 batch_size=inputs.shape[0], sync_dist=not training)
        return total

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self.net.probabilities(self.net(batch_inputs(batch)), batch.get("allowed"))

    def labelled_counts(self, stage: str) -> Tensor:
        """Labelled samples per task summed over all processes."""
        counts = self.stage_metrics(stage).labelled_counts().to(self.device)
        return self.trainer.strategy.reduce(counts, reduce_op="sum") if self._trainer is not None else counts

    def _log_epoch_metrics(self, stage: str) -> None:
        results = self.stage_metrics(stage).compute(self.labelled_counts(stage))
        self.last_results[stage] = results
        flat = flatten_results(results, stage)
        headline = f"{stage}/mean/acc"
        self.log_dict({k: v for k, v in flat.items() if k != headline})
        if headline in flat:
            self.log(headline, flat[headline], prog_bar=stage == "val")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")
        self.stage_metrics("train").reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_validation_epoch_start(self) -> None:
        self.stage_metrics("val").reset()

    def on_test_epoch_start(self) -> None:
        self.stage_metrics("test").reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return optimization(self, self.optimizer_factory, self.scheduler_factory)

    # -- checkpoints ------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, **kwargs: Any) -> "MultiHeadModule":
        """Rebuild the module from a checkpoint's plain-data description, loading safely."""
        net = load(path)
        module = cls(net.config(), **kwargs)
        module.net.load_state_dict(net.state_dict())
        return module

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the self-description ``mhc`` (plain data) and the RNG states for exact resume."""
        checkpoint["mhc"] = {"format": CHECKPOINT_FORMAT, "net": self.net.config(), "metrics": self.last_results.get("val", {})}
        np_state = np.random.get_state()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restored here, before the train loader draws its seed (too late in on_train_start).
        rng = checkpoint.get("rng")
        if not rng or self._trainer is None or self.trainer.state.fn != "fit":
            return  # evaluating a checkpoint must not rewind the global RNG
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
