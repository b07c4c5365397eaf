"""The LightningModule that trains a :class:`~mhc.model.MultiHeadNet`.

It owns the training logic only: masked per-task losses, how they become one update (a
:mod:`mhc.weighting` method), per-head metrics, the optimizer and schedule, and what a
checkpoint carries. The network is rebuilt
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
from mhc.errors import ConfigError, NonFiniteLossError
from mhc.io import CHECKPOINT_FORMAT, load
from mhc.losses import batch_losses
from mhc.metrics import HeadMetrics, delta_m, flatten_results
from mhc.model.net import MultiHeadNet
from mhc.pretrain import build_objective
from mhc.training.balancing import BalancedStep, gradient_cosines, gradient_step, loss_step
from mhc.training.schedules import optimization
from mhc.training.speed import apply_speed_options
from mhc.weighting import Weighting, create

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
        weighting: ``{"name", "grads", **options}``: the :mod:`mhc.weighting` method (default
            ``static``: ``sum(task.weight * loss)``); ``grads`` (representation | parameters)
            is where gradient methods take the task gradients.
        accumulate_grad_batches: gradient methods step the optimizer themselves (manual
            optimization) and accumulate this many batches per step.
        gradient_clip_val: gradient-norm clipping for those manual steps.
        conflict_every: every this many steps, log the pairwise cosine similarity of the task
            gradients on the shared representation (0: never; ``None``: on the steps Lightning
            writes logs, every ``trainer.log_every_n_steps``).
        backbone_lr_scale: the backbone's learning rate as a multiple of the optimizer's (a
            head's is ``tasks.<name>.lr_scale``).
        baseline: ``{task: value}`` of ``baseline_metric`` for a baseline (e.g. single-task runs):
            validation then logs ``val/delta_m``, the mean relative gain over it in percent, for
            checkpoint selection and early stopping.
        run_config: the resolved run configuration (plain data), saved in checkpoints for model
            cards and reproduction.
        nonfinite_loss: a NaN or infinite training loss ``stop``s the run with a message naming
            the task and step (the checkpoints already written stay as they are), or ``skip``s
            that batch's update.
        speed: options of :func:`mhc.training.speed.apply_speed_options` (``channels_last``,
            ``compile``, ``fuse_heads``).
    """

    def __init__(
        self,
        net_config: Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        confusion: bool = True,
        auxiliary: Mapping[str, Mapping[str, Any]] | None = None,
        weighting: Mapping[str, Any] | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        conflict_every: int | None = None,
        backbone_lr_scale: float = 1.0,
        baseline: Mapping[str, float] | None = None,
        baseline_metric: str = "acc",
        run_config: Mapping[str, Any] | None = None,
        nonfinite_loss: str = "stop",
        speed: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # What the loggers show as the run's hyperparameters: the resolved config when there is one.
        self.save_hyperparameters({"net_config": dict(net_config), "auxiliary": dict(auxiliary or {}),
                                   "weighting": dict(weighting or {}), "config": dict(run_config or {})})
        self.net = MultiHeadNet.from_config(net_config)
        apply_speed_options(self.net, **dict(speed or {}))
        self.tasks = self.net.tasks
        self.task_names = list(self.tasks)
        options = dict(weighting or {"name": "static"})
        name = options.pop("name")
        self.gradients_of = options.pop("grads", None) or "representation"
        if name == "static" and options.get("weights") is None:
            options["weights"] = [t.weight for t in self.tasks.values()]
        self.weighting: Weighting = create(name, len(self.tasks), **options)
        if self.weighting.needs_grads and self.gradients_of == "representation" and not self.weighting.representation_ok:
            raise ConfigError(f"weighting={name} is defined on parameter gradients only; set weighting.grads=parameters")
        self.automatic_optimization = not self.weighting.needs_grads
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.gradient_clip_val = gradient_clip_val
        self.conflict_every = conflict_every
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.baseline = dict(baseline or {})
        self.baseline_metric = baseline_metric
        self.run_config = dict(run_config or {})
        if nonfinite_loss not in ("stop", "skip"):
            raise ConfigError(f"nonfinite_loss must be 'stop' or 'skip', got '{nonfinite_loss}'")
        self.nonfinite_loss = nonfinite_loss
        self.skipped_steps = 0
        # Masked-modeling objectives trained alongside the heads, on every batch, labelled or not.
        self.auxiliary = torch.nn.ModuleDict(
            {name: build_objective(self.net, spec["objective"], spec.get("options")) for name, spec in (auxiliary or {}).items()}
        )
        self.auxiliary_weights = {name: float(spec.get("weight", 1.0)) for name, spec in (auxiliary or {}).items()}
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.metrics = torch.nn.ModuleDict(
            {f"{stage}_": HeadMetrics(self.tasks, confusion=confusion and stage != "train", auroc=stage != "train")
             for stage in STAGES}
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
    def _auxiliary_loss(self, inputs: Tensor, stage: str) -> Tensor | float:
        total: Tensor | float = 0.0
        for name, objective in self.auxiliary.items():
            auxiliary = objective(self.net.backbone_input(inputs)).loss
            total = total + self.auxiliary_weights[name] * auxiliary
            self.log(f"{stage}/{name}/loss", auxiliary, on_step=False, on_epoch=True, batch_size=inputs.shape[0],
                     sync_dist=stage != "train")
        return total

    def _record(self, stage: str, batch: Mapping[str, Any], logits: Mapping[str, Tensor], losses: Mapping[str, Tensor],
                total: Tensor) -> None:
        probs = self.net.probabilities({k: v.detach() for k, v in logits.items()}, batch.get("allowed"))
        # Per-task losses are averaged over each task's labelled samples by the stage metrics.
        self.stage_metrics(stage).update(probs, batch["targets"], batch["label_mask"], losses)
        training = stage == "train"
        self.log(f"{stage}/loss", total.detach(), prog_bar=True, on_step=training, on_epoch=True,
                 batch_size=next(iter(logits.values())).shape[0], sync_dist=not training)

    def _shared_step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        """Validation and test: the static-weighted loss, the same whatever the training method."""
        inputs = batch_inputs(batch)
        logits = self.net(inputs)
        losses = self.task_losses(logits, batch)
        total = self.combine(losses) + self._auxiliary_loss(inputs, stage)
        self._record(stage, batch, logits, losses, total)
        return total

    def checked(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """``losses`` if all are finite; otherwise :class:`NonFiniteLossError` naming the task
        (every process agrees, so none is left waiting in a collective)."""
        bad = [name for name, loss in losses.items() if not bool(torch.isfinite(loss.detach()).all())]
        if self._trainer is not None and self.trainer.world_size > 1:
            if not self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
                return losses
            bad = bad or ["(another process)"]
        if not bad:
            return losses
        value = float(losses[bad[0]]) if bad[0] in losses else float("nan")
        where = f"step {self.global_step} (epoch {self.current_epoch})" if self._trainer is not None else "this step"
        raise NonFiniteLossError(f"the loss of task '{bad[0]}' is {value} at {where}")

    def balanced_step(self, batch: Mapping[str, Any]) -> BalancedStep:
        """The weighting method's step on a batch (see :mod:`mhc.training.balancing`); losses are
        checked before the method sees them, so its state never takes a NaN."""
        inputs = batch_inputs(batch)
        features = self.net.forward_features(inputs)
        mask = batch["label_mask"]
        if self.weighting.needs_grads:
            step = gradient_step(self.weighting, self.task_names, features, self.net.forward_heads,
                                 lambda logits: self.checked(self.task_losses(logits, batch)), mask,
                                 shared=list(self.net.backbone.parameters()), gradients_of=self.gradients_of)
        else:
            logits = self.net.forward_heads(features)
            step = loss_step(self.weighting, self.task_names, self.checked(self.task_losses(logits, batch)), logits, mask)
            if self._logs_conflict() and len(step.present) > 1:
                step.grads = torch.stack([
                    torch.autograd.grad(step.losses[t], features, retain_graph=True)[0].reshape(-1) for t in step.present
                ])
        step.objective = step.objective + self._auxiliary_loss(inputs, "train")
        return step

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        # Skipping must also undo what the forward pass did to buffers (batch-norm statistics).
        buffers = {k: v.clone() for k, v in self.net.named_buffers()} if self.nonfinite_loss == "skip" else None
        try:
            step = self.balanced_step(batch)
            if self.auxiliary:  # the heads' losses are checked already; what the objectives added
                self.checked({", ".join(self.auxiliary): step.objective})
        except NonFiniteLossError as err:
            if self.nonfinite_loss == "stop":
                folder = getattr(self.trainer.checkpoint_callback, "dirpath", None)
                kept = f"; the checkpoints in {folder} are kept" if folder else ""
                raise NonFiniteLossError(f"training stopped: {err}{kept} (nonfinite_loss=skip skips such batches)") from None
            self.net.load_state_dict(buffers, strict=False)
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            if not self.automatic_optimization and self.trainer.is_last_batch:
                self._manual_update(None, batch_idx)
            return None
        weighted = sum(step.weights.get(t, 0.0) * loss.detach() for t, loss in step.losses.items())
        self._record("train", batch, step.logits, step.losses, torch.as_tensor(weighted, device=self.device))
        self._log_balance(step)
        if self.automatic_optimization:
            return step.objective
        self._manual_update(step.objective, batch_idx)
        return step.objective.detach()

    def _manual_update(self, objective: Tensor | None, batch_idx: int) -> None:
        """Backward, and every ``accumulate_grad_batches`` batches an optimizer and schedule step."""
        optimizer = self.optimizers()
        if objective is not None:
            self.manual_backward(objective / self.accumulate_grad_batches)
        if (batch_idx + 1) % self.accumulate_grad_batches and not self.trainer.is_last_batch:
            return
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def _logs_conflict(self) -> bool:
        """Whether this step measures gradient conflict: Lightning writes step logs after global
        steps ``n - 1, 2n - 1, ...``, so the measurement lands on those."""
        every = self.conflict_every
        if every is None:
            every = self.trainer.log_every_n_steps if self._trainer is not None else 0
        return bool(every) and (self.global_step + 1) % every == 0

    def _log_balance(self, step: BalancedStep) -> None:
        """Per-task weights every step; gradient conflict (pairwise cosine) when the gradients are at hand."""
        if step.weights:
            self.log_dict({f"train/weight/{t}": w for t, w in step.weights.items()}, on_step=True, on_epoch=False)
        if step.grads is None or len(step.present) < 2 or not self._logs_conflict():
            return
        cosines = gradient_cosines(step.grads)
        pairs = torch.triu_indices(len(step.present), len(step.present), offset=1)
        values = cosines[pairs[0], pairs[1]]
        scalars = {"train/conflict/mean_cosine": values.mean(), "train/conflict/negative_fraction": (values < 0).float().mean()}
        if len(step.present) <= 8:
            scalars.update({f"train/conflict/{step.present[i]}~{step.present[j]}": cosines[i, j]
                            for i, j in pairs.T.tolist()})
        self.log_dict(scalars, on_step=True, on_epoch=False)

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
        if self.baseline and stage != "train":
            self.log(f"{stage}/delta_m", delta_m(results, self.baseline, self.baseline_metric))

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")
        self.stage_metrics("train").reset()
        self.weighting.on_epoch_end()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_validation_epoch_start(self) -> None:
        self.stage_metrics("val").reset()

    def on_test_epoch_start(self) -> None:
        self.stage_metrics("test").reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- optimisation -----------------------------------------------------------------------
    @property
    def backbone(self) -> torch.nn.Module:
        """The shared backbone (what Lightning's ``BackboneFinetuning`` freezes and thaws)."""
        return self.net.backbone

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: the backbone, each head (its task's ``lr_scale``), and the rest
        (auxiliary decoders, learned task weights); frozen parameters are left out."""
        def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad]

        groups = [{"name": "backbone", "params": trainable(self.net.backbone), "lr_scale": self.backbone_lr_scale}]
        groups += [{"name": f"head/{name}", "params": trainable(head), "lr_scale": self.tasks[name].lr_scale}
                   for name, head in self.net.heads.items()]
        grouped = {id(p) for g in groups for p in g["params"]}
        groups.append({"name": "other", "params": [p for p in self.parameters() if p.requires_grad and id(p) not in grouped]})
        return groups

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
        checkpoint["mhc"] = {"format": CHECKPOINT_FORMAT, "net": self.net.config(), "metrics": self.last_results.get("val", {}),
                             "config": self.run_config}
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
