"""Objects from a config: data, tasks, the module, callbacks, loggers and the trainer.

Every ``mhc-*`` command and :mod:`mhc.api` build what they run here, so a config means the same
thing wherever it is used. A constructor's failure is one :class:`~mhc.errors.ConfigError`
naming the config group.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import socket
import types
import typing
from typing import Any, Mapping
from urllib.parse import urlparse

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from mhc.api.recipe import IMAGE_STEPS
from mhc.config import config_dir
from mhc.data.augment import Augmentation
from mhc.data.balance import BALANCED, encoded_labels, prior_logits, resolve_balanced
from mhc.data.mixing import BatchMixing
from mhc.errors import ConfigError, MhcError
from mhc.io import read_checkpoint, recorded_config
from mhc.model.backbones import list_backbones
from mhc.model.backbones.registry import accepted_options, backbone_processing
from mhc.model.net import backbone_takes_tokens
from mhc.predictor import check_tta
from mhc.processing.processors import ImageProcessor, Processor, TextProcessor
from mhc.tasks import TaskSpec, resolve_tasks, tasks_to_dicts
from mhc.training import MultiHeadModule
from mhc.training.checkpoint_io import AtomicCheckpointIO
from mhc.training.console import quiet_dependencies
from mhc.training.flips import FlipCheck
from mhc.training.guards import BadStart, NonFiniteLoss, ShortRun

log = logging.getLogger(__name__)


def instantiate(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with a one-line error naming the config group."""
    try:
        check_known_options(node, what, kwargs)
        check_scalar_options(node, what)
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as err:  # noqa: BLE001 - instantiate wraps every constructor error
        if isinstance(err, MhcError):
            raise
        cause = err.__cause__ or err
        if isinstance(cause, MhcError):
            raise cause from None
        raise ConfigError(f"{what}: {' '.join(str(cause).split())}") from None


SCALAR_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def config_target(node: Any) -> Any:
    """The object a config node's ``_target_`` names, or ``None`` (no target, or one that does not
    import: :func:`instantiate` reports that)."""
    if not isinstance(node, DictConfig) or not node.get("_target_"):
        return None
    try:
        return hydra.utils.get_object(str(node._target_))
    except Exception:  # noqa: BLE001 - hydra raises several types for a target that does not import
        return None


def check_known_options(node: Any, what: str, given: Mapping[str, Any] = {}) -> None:  # noqa: B006 - read only
    """Every option of ``node`` is a parameter of its ``_target_`` (unless the target takes
    ``**kwargs``): ``+scheduler.warmup=0.1`` is one error listing the options there are."""
    target = config_target(node)
    if target is None:
        return
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a target without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [key for key in node if not str(key).startswith("_") and key not in parameters and key not in given]
    if unknown:
        known = sorted(name for name, p in parameters.items() if p.default is not inspect.Parameter.empty or name in node)
        raise ConfigError(f"{what}: unknown option(s) {unknown} for {node._target_}; its options are {known}")


def check_scalar_options(node: Any, what: str) -> None:
    """A number, boolean or string option must have a type that the target's annotation allows,
    so that ``trainer.max_epochs=x`` is one :class:`ConfigError` instead of a traceback deep in
    training. Lists, mappings and options annotated with anything but plain classes (generics,
    literals, callables) are left to the target."""
    target = config_target(node)
    if target is None:
        return
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # noqa: BLE001 - unreadable hints are skipped
        return
    for option, hint in hints.items():
        if option not in node or option == "return":
            continue
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        allowed = typing.get_args(hint) if union else (hint,)
        value = node[option]
        if not isinstance(value, tuple(SCALAR_TYPES)) or typing.Any in allowed or not all(isinstance(t, type) for t in allowed):
            continue
        accepted = (*allowed, int) if float in allowed else allowed
        if isinstance(value, accepted) and (bool in allowed or not isinstance(value, bool)):
            continue
        described = [t for t in allowed if t is not type(None) and not (t is int and float in allowed)]
        expected = " or ".join(SCALAR_TYPES.get(t, f"a {t.__name__}") for t in described)
        raise ConfigError(f"{what}.{option} must be {expected}, got {value!r}")


def chosen_option(cfg: DictConfig, group: str) -> str:
    """The option picked for a config group (``manifest`` for ``data=manifest``), for messages:
    Hydra's record on the command line, else the group's file whose ``_target_`` matches."""
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group))
    target = cfg[group].get("_target_")
    for path in sorted((config_dir() / group).glob("*.yaml")):
        if OmegaConf.load(path).get("_target_") == target:
            return path.stem
    return str(target)


def build_datamodule(cfg: DictConfig) -> Any:
    """The configured data module (with ``data=checkpoint``, the checkpoint's: :func:`checkpoint_data`)."""
    return instantiate(checkpoint_data(cfg), "data")


def checkpoint_data(cfg: DictConfig, recorded: Mapping[str, Any] | None = None) -> DictConfig:
    """The data config of a command that reads a checkpoint: ``cfg.data``, or with ``data=checkpoint``
    the data config the checkpoint records (its run configuration ``recorded``, read from
    ``cfg.ckpt`` when not given), checked to build only packaged data modules, with the options
    set in ``cfg.data`` on top. A ``data.predict`` file for a checkpoint trained on data that
    takes none (the built-in sets) is read as a manifest."""
    if not cfg.get("data") or not cfg.data.get("from_checkpoint"):
        return cfg.data
    if not cfg.get("ckpt"):
        raise ConfigError("data=checkpoint is the data a checkpoint records, for commands that read one (mhc-eval, "
                          "mhc-predict, ...); choose the data, e.g. data=manifest data.train=train.csv")
    stored = (recorded_config(cfg.ckpt) if recorded is None else recorded).get("data")
    if not isinstance(stored, Mapping) or not stored.get("_target_"):
        raise ConfigError(f"data=checkpoint: '{cfg.ckpt}' records no data config (it was saved outside a training run, "
                          "or is an export folder); choose the data, e.g. data=manifest data.test=test.csv")
    known = packaged_targets("data")
    for target in targets_in(stored):
        if target not in known:
            raise ConfigError(f"data=checkpoint: '{cfg.ckpt}' records the data module {str(target)[:100]!r}, which is not "
                              f"one of mhc's {sorted(known)}; choose the data, e.g. data=manifest")
    given = {key: value for key, value in OmegaConf.to_container(cfg.data, resolve=True).items()
             if value is not None and key != "from_checkpoint"}
    if given.get("predict") and "predict" not in accepted_parameters(str(stored["_target_"])):
        stored = OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / "manifest.yaml"), resolve=False)
    return OmegaConf.merge(OmegaConf.create(dict(stored)), given)


def accepted_parameters(target: str) -> set[str]:
    """The keyword parameters of a target's constructor (what its config may set)."""
    return set(inspect.signature(hydra.utils.get_object(target)).parameters)


def packaged_targets(group: str) -> set[str]:
    """Every ``_target_`` the packaged configs of ``group`` name (nested ones included)."""
    return {t for path in (config_dir() / group).glob("*.yaml")
            for t in targets_in(OmegaConf.to_container(OmegaConf.load(path), resolve=False))}


def targets_in(node: Any) -> list[Any]:
    """The ``_target_`` values anywhere in plain config data."""
    if isinstance(node, Mapping):
        return [*([node["_target_"]] if "_target_" in node else []), *(t for v in node.values() for t in targets_in(v))]
    if isinstance(node, list):
        return [t for v in node for t in targets_in(v)]
    return []


def checkpoint_with_data(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """The module of ``cfg.ckpt``, the configured data serving the checkpoint's tasks, and a
    Trainer for evaluation or prediction (no logger, no checkpoints)."""
    check_tta(cfg.get("tta"))
    module = MultiHeadModule.from_checkpoint(cfg.ckpt)
    module.tta = cfg.get("tta")
    datamodule = instantiate(checkpoint_data(cfg, module.run_config), "data")  # the record read with the module
    datamodule.set_tasks(list(module.tasks.values()))
    datamodule.use_processor(module.net.processor)  # e.g. the saved tokenizer, never refitted
    quiet_dependencies()
    # One process: a distributed sampler would pad the split with repeated samples.
    trainer = instantiate(cfg.trainer, "trainer", logger=False, enable_checkpointing=False, callbacks=[],
                          devices=1, num_nodes=1, strategy="auto")
    return module, datamodule, trainer


AUXILIARY = ("masked_modeling",)  # objectives trained beside the heads: the one of ``cfg.objective``


def auxiliary_tasks(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The auxiliary objectives with a weight above 0 (``auxiliary=masked_modeling``):
    ``{name: {"objective", "weight", "options"}}``, the masked-modeling objective of ``objective``
    trained alongside the heads."""
    found = {}
    for name, options in (OmegaConf.to_container(cfg.auxiliary, resolve=True) if cfg.get("auxiliary") else {}).items():
        if name not in AUXILIARY:
            raise ConfigError(f"auxiliary.{name}: unknown auxiliary objective; expected one of {list(AUXILIARY)}")
        weight = float(options["weight"])
        if weight > 0:
            found[name] = {"objective": str(cfg.objective.name), "weight": weight,
                           "options": OmegaConf.to_container(cfg.objective, resolve=True)}
    return found


def config_tasks(cfg: DictConfig, provided: list[TaskSpec]) -> list[TaskSpec]:
    """The data's tasks with the ``head`` and ``loss`` defaults, then ``tasks.<name>`` options, applied."""
    head = OmegaConf.to_container(cfg.head, resolve=True)
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    overrides = OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.get("tasks") else {}
    with_defaults = [
        fill_defaults(t, {**head, "loss": loss[t.kind], "label_smoothing": loss["label_smoothing"],
                          "focal_gamma": loss["focal_gamma"], "label_reduction": loss.get("label_reduction", "mean"),
                          # loss.class_weights / loss.pos_weight: e.g. balanced for every head of the kind
                          **({"class_weights": loss.get("class_weights")} if t.kind == "multiclass"
                             else {"pos_weight": loss.get("pos_weight")})})
        for t in provided
    ]
    return resolve_tasks(with_defaults, overrides)


def fill_defaults(task: TaskSpec, defaults: dict[str, Any]) -> TaskSpec:
    """``task`` with ``defaults`` for the options it leaves at their built-in values, so that
    what the data declares for a task (e.g. a manifest's ``data.tasks``) wins over defaults."""
    pristine = TaskSpec(task.name, task.kind, task.classes)
    fill = {k: v for k, v in defaults.items() if getattr(task, k) == getattr(pristine, k)}
    return TaskSpec.from_dict({**task.to_dict(), **fill})


AUTO_MONITOR = "auto"


def default_monitor(cfg: DictConfig) -> str:
    """What ``monitor: auto`` means: ``val/delta_m`` when a ``delta_m.baseline`` is set, else
    ``val/mean/f1``: F1 per head (macro over classes for multiclass and multilabel heads),
    meaningful for every kind, unlike a multilabel head's label-wise accuracy."""
    return "val/delta_m" if OmegaConf.select(cfg, "delta_m.baseline", default=None) is not None else "val/mean/f1"


def build_callbacks(cfg: DictConfig, has_logger: bool = True) -> list[Any]:
    """The configured callbacks, a ``monitor: auto`` made :func:`default_monitor`; those that only
    feed a logger are left out of a run without one."""
    callbacks = [instantiate(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node]
    for callback in callbacks:
        if getattr(callback, "monitor", None) == AUTO_MONITOR:
            callback.monitor = default_monitor(cfg)
    if not has_logger:
        from pytorch_lightning.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not node:
            continue
        if str(node.get("_target_", "")).endswith("WandbLogger") and not node.get("offline", False):
            problem = wandb_online_problem()
            if problem:
                log.warning(f"{problem}; logging offline (sync later with `wandb sync`)")
                node = OmegaConf.merge(node, {"offline": True})
        loggers.append(instantiate(node, f"logger.{name}"))
    return loggers


def wandb_online_problem(timeout: float = 3.0) -> str | None:
    """Why wandb could not log online (no API key, or its server out of reach), else ``None``."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return None
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    if not os.environ.get("WANDB_API_KEY"):
        import netrc

        try:
            if netrc.netrc().authenticators(url.hostname or "api.wandb.ai") is None:
                return "wandb has no API key"
        except (FileNotFoundError, netrc.NetrcParseError):
            return "wandb has no API key"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return f"wandb server {url.scheme}://{url.hostname}:{port} is out of reach"
    return None


def speed_options(cfg: DictConfig) -> dict[str, Any] | None:
    """``perf.*`` for the network (:func:`~mhc.training.speed.apply_speed_options`); ``perf.threads``
    is the process's (:func:`~mhc.training.speed.use_threads`)."""
    if not cfg.get("perf"):
        return None
    return {key: value for key, value in OmegaConf.to_container(cfg.perf).items() if key != "threads"}


def build_module(cfg: DictConfig, datamodule: Any) -> MultiHeadModule:
    check_tta(cfg.get("tta"))
    tasks = config_tasks(cfg, datamodule.task_specs())
    datamodule.set_tasks(tasks)
    if any(BALANCED in (t.class_weights, t.pos_weight) for t in tasks):  # weights from the training counts
        datamodule.setup("train")
        tasks = resolve_balanced(tasks, datamodule.splits["train"], cfg.loss.get("balanced_power", 1.0) if cfg.get("loss") else 1.0)
        datamodule.set_tasks(tasks)
    augmentation = build_augmentation(cfg, tasks) if cfg.get("augment") else None
    datamodule.use_augmentation(augmentation)
    on_device = augmentation if augmentation is not None and augmentation.active and augmentation.where == "device" else None
    processor = processor_for_backbone(cfg, datamodule)
    backbone = backbone_for_data(cfg, processor)
    net_config = {"backbone": backbone, "tasks": tasks_to_dicts(tasks), "processor": processor.to_dict()}
    optimizer, layer_decay = build_optimizer(cfg)
    scheduler = instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    weighting = OmegaConf.to_container(cfg.weighting, resolve=True) if cfg.get("weighting") else None
    trainer = cfg.get("trainer") or {}
    baseline = cfg.delta_m.baseline
    if baseline is not None:
        baseline = baseline_metrics(OmegaConf.to_container(baseline) if isinstance(baseline, DictConfig) else str(baseline),
                                    cfg.delta_m.metric)
    module = MultiHeadModule(net_config, optimizer=optimizer, scheduler=scheduler, auxiliary=auxiliary_tasks(cfg),
                           weighting=weighting, accumulate_grad_batches=trainer.get("accumulate_grad_batches") or 1,
                           gradient_clip_val=trainer.get("gradient_clip_val"), backbone_lr_scale=cfg.backbone_lr_scale,
                           layer_decay=layer_decay, backbone_freeze=cfg.backbone_freeze,
                           baseline=baseline, baseline_metric=cfg.delta_m.metric,
                           augmentation=on_device, mixing=build_mixing(cfg),
                           run_config=OmegaConf.to_container(cfg, resolve=True),
                           speed=speed_options(cfg))
    priors = [task for task in tasks if task.bias_init == "prior"]  # the heads start at the training base rates
    if priors:
        datamodule.setup("train")
        for task in priors:
            logits = prior_logits(task, encoded_labels(datamodule.splits["train"], task.name))
            with torch.no_grad():
                module.net.heads[task.name].output.bias.copy_(torch.tensor(logits))
    return module


# augment options that mix the training batch (mhc.data.mixing), and their BatchMixing names
MIXING_OPTIONS = {"mixup": "mixup", "cutmix": "cutmix", "mix_prob": "prob", "switch_prob": "switch_prob"}


def build_augmentation(cfg: DictConfig, tasks: list[TaskSpec]) -> Augmentation:
    """The per-sample training augmentation of ``cfg.augment``, with the tasks' flip rules."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.augment, resolve=True).items() if k not in MIXING_OPTIONS}
    try:
        return Augmentation(**options, tasks=tasks)
    except TypeError as err:
        raise ConfigError(f"augment: {' '.join(str(err).split())}") from None


def build_mixing(cfg: DictConfig) -> BatchMixing | None:
    """Mixup / CutMix of the training batches from ``cfg.augment`` (``None`` when both are off)."""
    options = OmegaConf.to_container(cfg.augment, resolve=True) if cfg.get("augment") else {}
    mixing = BatchMixing(**{MIXING_OPTIONS[k]: v for k, v in options.items() if k in MIXING_OPTIONS})
    return mixing if mixing.active else None


def build_optimizer(cfg: DictConfig) -> tuple[Any, float | None]:
    """The optimizer factory of ``cfg.optimizer`` and its ``layer_decay`` (an mhc option, not the
    optimizer's: each backbone depth's learning rate is ``layer_decay`` times the next one's)."""
    if not cfg.get("optimizer"):
        return None, None
    node = OmegaConf.to_container(cfg.optimizer, resolve=False)
    layer_decay = node.pop("layer_decay", None)
    if layer_decay is not None and not (isinstance(layer_decay, (int, float)) and 0 < layer_decay <= 1):
        raise ConfigError(f"optimizer.layer_decay must be a number in (0, 1], got {layer_decay!r}")
    return instantiate(OmegaConf.create(node), "optimizer"), None if layer_decay is None else float(layer_decay)


def backbone_options(cfg: DictConfig) -> dict[str, Any]:
    """The backbone's options as plain data; one left at ``???`` is a :class:`ConfigError` naming it."""
    try:
        return OmegaConf.to_container(cfg.backbone, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = err.full_key if err.full_key.startswith("backbone") else f"backbone.{err.full_key}"
        raise ConfigError(f"{key}: this backbone needs a value (backbone={cfg.backbone.get('name')} {key}=...)") from None


def processor_for_backbone(cfg: DictConfig, datamodule: Any) -> Processor:
    """The data's processor, with what the backbone's weights expect (:meth:`Backbone.processing`):
    a model's own tokenizer replaces one fitted on the data (the data module then serves it), and
    pretrained weights' normalisation replaces the data's ``mean`` and ``std``."""
    wanted = backbone_processing(backbone_options(cfg))
    if "tokenizer" in wanted:
        datamodule.use_processor(TextProcessor(wanted["tokenizer"], max_length=int(cfg.data.get("max_length") or 128)))
    processor = datamodule.processor()
    if isinstance(processor, ImageProcessor) and "mean" in wanted:
        if (processor.mean, processor.std) != (wanted["mean"], wanted["std"]):
            log.info(f"images normalised as the backbone's pretrained weights expect: mean {wanted['mean']}, std {wanted['std']}")
        processor = dataclasses.replace(processor, mean=wanted["mean"], std=wanted["std"])
    return processor


def backbone_for_data(cfg: DictConfig, processor: Processor) -> dict[str, Any]:
    """The backbone options fitted to the data, where its constructor takes them: a token
    backbone takes ``vocab_size`` and ``pad_id`` from the data's tokenizer and ``max_length``
    from the data's sequence length; an image backbone left without an ``image_size`` takes the data's. A
    backbone that reads the other kind of input (token ids for images, or images for tokens) is
    a :class:`ConfigError`."""
    backbone = backbone_options(cfg)
    reads_tokens = backbone_takes_tokens(backbone)
    if reads_tokens != isinstance(processor, TextProcessor):
        reads, gives = ("token ids", "images") if reads_tokens else ("images", "token ids")
        token_data = " or token data (data=sequences, or data=manifest with a 'text' column)" if reads_tokens else ""
        raise ConfigError(
            f"backbone={backbone.get('name')} reads {reads} but data={chosen_option(cfg, 'data')} gives {gives}; "
            f"choose a backbone that reads {gives} ({', '.join(backbones_reading(tokens=not reads_tokens))}){token_data}"
        )
    accepted = accepted_options(str(backbone.get("name")))
    fitted: dict[str, Any] = {}
    if isinstance(processor, TextProcessor):
        if processor.tokenizer is not None:
            fitted["vocab_size"] = processor.tokenizer.vocab_size
        fitted["max_length"] = processor.max_length
        fitted["pad_id"] = processor.pad_id
    elif backbone.get("image_size") is None:
        fitted["image_size"] = list(processor.size)
    backbone.update({key: value for key, value in fitted.items() if key in accepted})
    return backbone


def backbones_reading(tokens: bool) -> list[str]:
    """The registered backbones that read token ids (``tokens``) or images, for messages."""
    names = []
    for name in list_backbones():
        try:
            if backbone_takes_tokens({"name": name}) == tokens:
                names.append(name)
        except MhcError:  # a backbone that cannot be built without options is left out of the hint
            continue
    return names


def build_trainer(cfg: DictConfig, module: Any, datamodule: Any, loggers: list[Any], callbacks: list[Any]) -> Any:
    """The configured Lightning ``Trainer`` for fitting ``module``: atomic checkpoint writes; the
    ``nonfinite_loss`` policy; a module that steps its optimizer itself (gradient methods)
    accumulates and clips on its own; data that shards itself (multi-source batches) gets no
    ``DistributedSampler``."""
    quiet_dependencies()
    if cfg.get("nonfinite_loss"):
        callbacks = [*callbacks, NonFiniteLoss(cfg.nonfinite_loss)]
    if isinstance(module, MultiHeadModule):
        callbacks = [*callbacks, BadStart(), ShortRun(advised_steps=IMAGE_STEPS)]
        if module.augmentation is not None and module.augmentation.hflip_check and module.augmentation.hflip > 0:
            callbacks = [*callbacks, FlipCheck()]
    options: dict[str, Any] = {}
    if not module.automatic_optimization:
        options.update(accumulate_grad_batches=1, gradient_clip_val=None)
    if getattr(datamodule, "shards_itself", False):
        options["use_distributed_sampler"] = False
    return instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                       plugins=[AtomicCheckpointIO()], **options)


def baseline_metrics(source: str | Mapping[str, Any], metric: str = "acc") -> dict[str, float]:
    """``{task: value}`` of a baseline: a mapping (``{task: value}`` or ``{task: {metric: value}}``),
    or the path of a baseline run's checkpoint (its saved validation metrics)."""
    if isinstance(source, Mapping):
        values = {t: (v[metric] if isinstance(v, Mapping) else v) for t, v in source.items()}
    else:
        saved = read_checkpoint(source)["mhc"].get("metrics") or {}
        values = {t: v[metric] for t, v in saved.items() if metric in v}
        if not values:
            raise ConfigError(f"delta_m.baseline: checkpoint '{source}' holds no validation '{metric}' per task")
    return {str(t): float(v) for t, v in values.items()}
