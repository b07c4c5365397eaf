"""The LightningModule that trains a :class:`~mhc.model.MultiHeadNet`.

It wires the parts to Lightning: the step (:mod:`mhc.training.step`: masked per-task losses
and the :mod:`mhc.weighting` method), per-head metrics, optimizer groups and schedule, and
what a checkpoint carries. The network is rebuilt from plain data (``net_config``), so
checkpoints load with ``weights_only=True``. Exact resume and the non-finite loss policy are
callbacks (:mod:`mhc.training.guards`).

``<stage>/loss`` is the same quantity in training, validation and test: ``sum(task.weight *
loss)`` over the heads (each head's loss averaged over its labelled samples) plus the weighted
auxiliary losses. A weighting method may train on another combination; its per-task weights
are logged as ``train/weight/<task>``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor

from mhc.data.augment import Augmentation
from mhc.data.labels import batch_inputs
from mhc.data.mixing import BatchMixing
from mhc.errors import ConfigError, NonFiniteLossError
from mhc.io import CHECKPOINT_FORMAT, load_with_config
from mhc.metrics import HeadMetrics, delta_m, flatten_results
from mhc.model.net import MultiHeadNet
from mhc.predictor import OutputDecoder, check_tta, flip_views
from mhc.pretrain import build_objective
from mhc.tasks import BALANCED, TaskSpec
from mhc.training.guards import RestoreRNG
from mhc.training.schedules import optimization
from mhc.training.speed import apply_speed_options
from mhc.training.step import MultiTaskStep, checked, static_loss
from mhc.weighting import Weighting, create

STAGES = ("train", "val", "test")
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def freeze_backbone(backbone: torch.nn.Module, freeze: int | str) -> list[torch.nn.Module]:
    """Freeze ``backbone``'s parameters below depth ``freeze`` (``"all"``: every one); the batch
    norms left with no trainable parameter, which are then kept in eval mode."""
    if freeze in (0, None, False):
        return []
    if freeze != "all" and not (isinstance(freeze, int) and not isinstance(freeze, bool) and freeze > 0):
        raise ConfigError(f"backbone_freeze must be 0, a positive depth or 'all', got {freeze!r}")
    depths = backbone.parameter_depths() if freeze != "all" else {}
    for name, parameter in backbone.named_parameters():
        if freeze == "all" or depths[name] < freeze:
            parameter.requires_grad = False
    return [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


class MultiHeadModule(pl.LightningModule):
    """Trains a shared backbone with one head per task.

    Args:
        net_config: ``MultiHeadNet.config()``-style plain data (backbone, tasks, processor).
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
        layer_decay: layer-wise learning-rate decay: a backbone parameter of depth ``d``
            (:meth:`~mhc.model.backbones.base.Backbone.parameter_depths`) learns at
            ``layer_decay ** (deepest - d)`` times the backbone's rate, so early layers change least.
        backbone_freeze: backbone parameters kept frozen: ``0`` none, ``N`` those of depth below
            ``N``, ``"all"`` every one (the heads alone train); frozen batch norms keep their statistics.
        baseline: ``{task: value}`` of ``baseline_metric`` for a baseline (e.g. single-task runs):
            validation then logs ``val/delta_m``, the mean relative gain over it in percent, for
            checkpoint selection and early stopping.
        run_config: the resolved run configuration (plain data), saved in checkpoints for model
            cards and reproduction.
        speed: options of :func:`mhc.training.speed.apply_speed_options` (``channels_last``,
            ``compile``, ``fuse_heads``).
        augmentation: training augmentation of whole batches on their device (``augment.where=device``,
            :meth:`~mhc.data.augment.Augmentation.batch`).
        mixing: Mixup / CutMix of the training batches (:class:`~mhc.data.mixing.BatchMixing`).
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
        layer_decay: float | None = None,
        backbone_freeze: int | str = 0,
        baseline: Mapping[str, float] | None = None,
        baseline_metric: str = "acc",
        run_config: Mapping[str, Any] | None = None,
        speed: Mapping[str, Any] | None = None,
        augmentation: Augmentation | None = None,
        mixing: BatchMixing | None = None,
    ) -> None:
        super().__init__()
        # What the loggers show as the run's hyperparameters: the resolved config when there is one.
        self.save_hyperparameters({"net_config": dict(net_config), "auxiliary": dict(auxiliary or {}),
                                   "weighting": dict(weighting or {}), "config": dict(run_config or {})})
        self.net = MultiHeadNet.from_config(net_config)
        for task in self.net.tasks.values():
            for option in ("class_weights", "pos_weight"):
                if getattr(task, option) == BALANCED:
                    raise ConfigError(f"task '{task.name}': {option}=balanced is computed from the training data when "
                                      "mhc-train starts; give numbers to build a module directly")
        apply_speed_options(self.net, **dict(speed or {}))
        self.tasks = self.net.tasks
        self.task_names = list(self.tasks)
        self.decoder = OutputDecoder(self.tasks.values())  # probabilities for metrics and predict, as every runtime
        options = dict(weighting or {"name": "static"})
        name = options.pop("name")
        gradients_of = options.pop("grads", None) or "representation"
        if name == "static" and options.get("weights") is None:
            options["weights"] = [t.weight for t in self.tasks.values()]
        self.weighting: Weighting = create(name, len(self.tasks), **options)  # a child module: learned weights train
        self.step = MultiTaskStep(self.tasks, self.weighting, gradients_of, accumulate_grad_batches, gradient_clip_val,
                                  conflict_every)
        self.automatic_optimization = not self.step.manual
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.layer_decay = layer_decay
        self.frozen_norms = freeze_backbone(self.net.backbone, backbone_freeze)
        self.baseline = dict(baseline or {})
        self.baseline_metric = baseline_metric
        self.run_config = dict(run_config or {})
        self.augmentation = augmentation
        self.mixing = mixing
        self.tta: str | None = None  # validation, test and predict: "flip" (mhc-eval tta=flip, mhc-predict)
        self.nonfinite: NonFiniteLossError | None = None  # this batch's, for the NonFiniteLoss callback
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
        # Validation and test of the multiclass heads decoded without the data's allowed sets, as for
        # new inputs that have none (reported as <metric>_open where the data gives allowed sets).
        multiclass = {name: task for name, task in self.tasks.items() if task.kind == "multiclass"}
        self.open_metrics = torch.nn.ModuleDict(
            {f"{stage}_": HeadMetrics(multiclass, auroc=False) for stage in STAGES if stage != "train" and multiclass})
        self.last_results: dict[str, dict[str, dict[str, float]]] = {}

    def use_tasks(self, tasks: Iterable[TaskSpec]) -> None:
        """Take new specs of the same tasks (e.g. calibrated: temperatures, thresholds): the network
        saves them, and the decoder and the metrics decide with them from now on."""
        tasks = list(tasks)
        if sorted(t.name for t in tasks) != sorted(self.tasks):
            raise ConfigError(f"the tasks {sorted(t.name for t in tasks)} are not this model's {sorted(self.tasks)}")
        self.net.tasks.update({t.name: t for t in tasks})  # the same dict as self.tasks
        self.decoder = OutputDecoder(self.tasks.values())
        for metrics in self.metrics.values():
            metrics.use_tasks(tasks)

    def stage_metrics(self, stage: str) -> HeadMetrics:
        return self.metrics[f"{stage}_"]  # ModuleDict keys may not shadow Module attributes ("train")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.net(images)

    def configure_callbacks(self) -> list[pl.Callback]:
        """:class:`RestoreRNG` in every run (once: a trainer that validates after fitting has it)."""
        attached = self._trainer is not None and any(isinstance(c, RestoreRNG) for c in self._trainer.callbacks)
        return [] if attached else [RestoreRNG()]

    # -- steps ------------------------------------------------------------------------------
    def _auxiliary_loss(self, inputs: Tensor, stage: str) -> Tensor | float:
        total: Tensor | float = 0.0
        for name, objective in self.auxiliary.items():
            auxiliary = objective(self.net.backbone_input(inputs)).loss
            total = total + self.auxiliary_weights[name] * auxiliary
            self.log(f"{stage}/{name}/loss", auxiliary, on_step=False, on_epoch=True, batch_size=inputs.shape[0],
                     sync_dist=stage != "train")
        return total

    def _update_metrics(self, stage: str, batch: Mapping[str, Any], logits: Mapping[str, Tensor],
                        losses: Mapping[str, Tensor]) -> None:
        views = self.views(batch_inputs(batch), {k: v.detach() for k, v in logits.items()}, training=stage == "train")
        allowed = batch.get("allowed") or {}
        probs = self.decoder.probabilities(views, allowed)
        # Per-task losses are averaged over each task's labelled samples by the stage metrics.
        self.stage_metrics(stage).update(probs, batch["targets"], batch["label_mask"], losses)
        opened = self.open_stage_metrics(stage) if allowed else None
        if opened is not None:  # the same outputs decoded without the data's allowed sets
            free = self.decoder.probabilities(views)
            given = {name: batch["label_mask"][name] & (name in allowed) for name in opened.tasks}
            opened.update({n: free[n] for n in opened.tasks}, {n: batch["targets"][n] for n in opened.tasks}, given)

    def _log_loss(self, stage: str, logits: Mapping[str, Tensor], losses: Mapping[str, Tensor],
                  auxiliary: Tensor | float) -> None:
        """``<stage>/loss``: the static-weighted loss plus the auxiliary losses."""
        total = static_loss(self.tasks, {k: v.detach() for k, v in losses.items()}) + auxiliary
        training = stage == "train"
        self.log(f"{stage}/loss", torch.as_tensor(total, device=self.device).detach(), prog_bar=True, on_step=training,
                 on_epoch=True, batch_size=next(iter(logits.values())).shape[0], sync_dist=not training)

    def measure(self, batch: Mapping[str, Any], stage: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Add ``batch`` to ``stage``'s metrics, logging nothing (weight averaging validates its copy
        of this module with it); the logits and per-task losses."""
        logits = self.net(batch_inputs(batch))
        losses = self.step.losses(self.net, logits, batch)
        self._update_metrics(stage, batch, logits, losses)
        return logits, losses

    def _shared_step(self, batch: Mapping[str, Any], stage: str) -> None:
        logits, losses = self.measure(batch, stage)
        self._log_loss(stage, logits, losses, self._auxiliary_loss(batch_inputs(batch), stage))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        if self.augmentation is not None and "image" in batch:  # augment.where=device
            batch = self.augmentation.batch(dict(batch))
        if self.mixing is not None:
            batch = self.mixing(batch, self.tasks, self.net.hierarchy)
        try:
            step = self.step(self, self.net, batch)
            auxiliary = self._auxiliary_loss(batch_inputs(batch), "train")
            if self.auxiliary:  # the heads' losses are checked already; what the objectives added
                checked(self, {", ".join(self.auxiliary): torch.as_tensor(auxiliary)})
        except NonFiniteLossError as err:  # no update; the NonFiniteLoss callback stops or skips
            self.nonfinite = err
            if not self.automatic_optimization and self.trainer.is_last_batch:
                self.step.update(self, None, batch_idx)
            return None
        objective = step.objective + auxiliary
        self._update_metrics("train", batch, step.logits, step.losses)
        self._log_loss("train", step.logits, step.losses, torch.as_tensor(auxiliary).detach())
        self.step.log(self, step)
        if self.automatic_optimization:
            return objective
        self.step.update(self, objective, batch_idx)
        return objective.detach()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.nonfinite is not None:  # no NonFiniteLoss callback took it: stop
            error, self.nonfinite = self.nonfinite, None
            raise NonFiniteLossError(f"training stopped: {error}")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        inputs = batch_inputs(batch)
        return self.decoder.probabilities(self.views(inputs, self.net(inputs)), batch.get("allowed"))

    def views(self, inputs: Tensor, logits: Mapping[str, Tensor], training: bool = False) -> Any:
        """``logits``, or outside training with ``tta`` set, each task's logits of its test-time views."""
        if self.tta is None or training:
            return logits
        check_tta(self.tta)
        with torch.no_grad():
            return flip_views(self.tasks.values(), self.net, inputs, logits)

    def open_stage_metrics(self, stage: str) -> HeadMetrics | None:
        """``stage``'s metrics of the multiclass heads decoded without the data's allowed sets
        (``None`` for training, or a model with no multiclass head)."""
        return self.open_metrics[f"{stage}_"] if f"{stage}_" in self.open_metrics else None

    def labelled_counts(self, stage: str, metrics: HeadMetrics | None = None) -> Tensor:
        """Labelled samples per task summed over all processes (of ``metrics``, default ``stage``'s)."""
        counts = (metrics or self.stage_metrics(stage)).labelled_counts().to(self.device)
        return self.trainer.strategy.reduce(counts, reduce_op="sum") if self._trainer is not None else counts

    def epoch_scores(self, stage: str, counts: Tensor | None = None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """``stage``'s results per task, and what is logged of them: ``{stage/task/metric: value}``,
        the means over tasks and, with a baseline, ``stage/delta_m``. ``counts``: the labelled
        samples per task over all processes, when known."""
        results = self.stage_metrics(stage).compute(self.labelled_counts(stage) if counts is None else counts)
        opened = self.open_stage_metrics(stage)
        if opened is not None:
            for task, values in opened.compute(self.labelled_counts(stage, opened)).items():
                results.setdefault(task, {}).update({f"{name}_open": value for name, value in values.items() if name != "loss"})
        flat = flatten_results(results, stage)
        if self.baseline and stage != "train":
            flat[f"{stage}/delta_m"] = delta_m(results, self.baseline, self.baseline_metric)
        return results, flat

    def logged_names(self, stage: str = "val") -> set[str]:
        """The names ``stage`` logs at each epoch end (what a checkpoint or early stopping may
        monitor): ``stage/task/metric``, ``stage/mean/metric``, ``stage/loss``, the auxiliary
        losses and, with a baseline, ``stage/delta_m``."""
        metrics = self.stage_metrics(stage)
        per_task = {task: metrics.names(task) for task in self.tasks}
        opened = self.open_stage_metrics(stage)
        if opened is not None:  # where the data gives allowed sets
            for task in opened.tasks:
                per_task[task] = [*per_task[task], *(f"{name}_open" for name in opened.names(task) if name != "loss")]
        names = {f"{stage}/{task}/{name}" for task, found in per_task.items() for name in found}
        names |= {f"{stage}/mean/{name}" for found in per_task.values() for name in found}
        names |= {f"{stage}/loss", *(f"{stage}/{name}/loss" for name in self.auxiliary)}
        if self.baseline and stage != "train":
            names.add(f"{stage}/delta_m")
        return names

    def _log_epoch_metrics(self, stage: str) -> None:
        results, flat = self.epoch_scores(stage)
        self.last_results[stage] = results
        headline = f"{stage}/mean/f1"  # the progress bar's (what checkpoints monitor by default)
        self.log_dict({k: v for k, v in flat.items() if k != headline})
        if headline in flat:
            self.log(headline, flat[headline], prog_bar=stage == "val")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")
        self.stage_metrics("train").reset()
        self.weighting.on_epoch_end()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_validation_epoch_start(self) -> None:
        self.reset_stage("val")

    def on_test_epoch_start(self) -> None:
        self.reset_stage("test")

    def reset_stage(self, stage: str) -> None:
        """Empty ``stage``'s metrics, those decoded without allowed sets included."""
        for metrics in (self.stage_metrics(stage), self.open_stage_metrics(stage)):
            if metrics is not None:
                metrics.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- optimisation -----------------------------------------------------------------------
    @property
    def backbone(self) -> torch.nn.Module:
        """The shared backbone (what Lightning's ``BackboneFinetuning`` freezes and thaws)."""
        return self.net.backbone

    def train(self, mode: bool = True) -> "MultiHeadModule":
        super().train(mode)
        for norm in self.frozen_norms:  # frozen batch norms keep their running statistics
            norm.eval()
        return self

    def backbone_groups(self) -> list[dict[str, Any]]:
        """The backbone's trainable parameters: one group, or with ``layer_decay`` one per depth."""
        named = [(name, p) for name, p in self.net.backbone.named_parameters() if p.requires_grad]
        if self.layer_decay is None:
            return [{"name": "backbone", "params": [p for _, p in named], "lr_scale": self.backbone_lr_scale}]
        depths = self.net.backbone.parameter_depths()
        deepest = max(depths.values(), default=0)
        by_depth: dict[int, list[torch.nn.Parameter]] = {}
        for name, parameter in named:
            by_depth.setdefault(depths[name], []).append(parameter)
        return [{"name": f"backbone/{depth}", "params": params,
                 "lr_scale": self.backbone_lr_scale * self.layer_decay ** (deepest - depth)}
                for depth, params in sorted(by_depth.items())]

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: the backbone (one per depth with ``layer_decay``), each head (its
        task's ``lr_scale``), and the rest (auxiliary decoders, learned task weights); frozen
        parameters are left out."""
        def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad]

        groups = self.backbone_groups()
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
        """Rebuild the module from a checkpoint's plain-data description, loading safely; its
        ``run_config`` is the one the checkpoint records."""
        net, run_config = load_with_config(path)
        module = cls(net.config(), run_config=run_config, **kwargs)
        module.net.load_state_dict(net.state_dict())
        return module

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the self-description ``mhc`` (plain data) that ``mhc.load`` rebuilds the network from."""
        checkpoint["mhc"] = {"format": CHECKPOINT_FORMAT, "net": self.net.config(), "metrics": self.last_results.get("val", {}),
                             "config": self.run_config}
