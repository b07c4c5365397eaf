"""Safe loading of trained models: ``mhc.load(path)``.

Checkpoints are read with ``torch.load(weights_only=True)``: no pickled code ever runs, and
the network is rebuilt from the plain-data description the checkpoint carries, through the
backbone registry (never by instantiating a ``_target_`` found in a file).
"""

from __future__ import annotations

import json
import os
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from mhc.errors import CheckpointError, MhcError, first_line
from mhc.model.description import check_description
from mhc.model.net import MultiHeadNet
from mhc.tasks import TaskSpec

CHECKPOINT_FORMAT = 1  # bump when the checkpoint's "mhc" description changes incompatibly
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as plain data; any failure is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): not a checkpoint, or one whose writing was cut off")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = unpickler_detail(str(err))
        if "global" in detail.lower():
            raise CheckpointError(
                f"checkpoint '{path}' was refused: it holds pickled objects that safe loading does not run ({detail})"
            ) from None
        raise CheckpointError(f"checkpoint '{path}' is truncated or not a checkpoint ({detail})") from None
    except Exception as err:  # noqa: BLE001 - torch.load fails on other files in many ways (EOFError, KeyError, ...)
        lines = str(err).strip().splitlines()
        detail = f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__
        raise CheckpointError(f"checkpoint '{path}' is truncated or not a checkpoint ({detail})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("mhc"), dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint '{path}' is not an mhc checkpoint (no model description inside)")
    version = checkpoint["mhc"].get("format", CHECKPOINT_FORMAT)
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint '{path}' has format {version}; this mhc reads format {CHECKPOINT_FORMAT}")
    return checkpoint


def unpickler_detail(message: str) -> str:
    """The informative line of torch's weights-only error (the refused global, or the fault)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "global" in line.lower():
            return line[:200]
        if line.startswith("WeightsUnpickler error"):
            rest = line.split(":", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return rest[:200]
    return lines[0][:200] if lines else "unreadable"


def net_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights from a Lightning ``state_dict`` (keys under ``net.``)."""
    return {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def load_weights(net: MultiHeadNet, state: dict[str, torch.Tensor], source: str | Path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"'{source}': the weights do not fit the described model ({detail})") from None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> MultiHeadNet:
    """Load a trained model from a checkpoint (``.ckpt``) or an export folder, in eval mode.

    The model knows its tasks (label maps), preprocessing and output masks::

        model = mhc.load("outputs/train/.../checkpoints/last.ckpt")
        out = model.predict(images)          # {task: TaskPrediction(labels, probs)}
    """
    return load_with_config(path, map_location)[0]


def load_with_config(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[MultiHeadNet, dict[str, Any]]:
    """:func:`load`, and the run configuration the model was trained with, from the same read
    (``{}`` where none is recorded: an export folder, a checkpoint saved outside a training run)."""
    path = Path(path)
    if path.is_dir():
        net, config = _load_export(path), None
    else:
        checkpoint = read_checkpoint(path)
        state = net_state(checkpoint)
        net = net_from_description(checkpoint["mhc"].get("net"), path, state)
        load_weights(net, state, path)
        config = checkpoint["mhc"].get("config")
    return net.to(map_location).eval(), dict(config) if isinstance(config, Mapping) else {}


def recorded_config(path: str | Path) -> dict[str, Any]:
    """The run configuration a checkpoint records (``{}`` for an export folder or none recorded)."""
    path = Path(path)
    config = None if path.is_dir() else read_checkpoint(path)["mhc"].get("config")
    return dict(config) if isinstance(config, Mapping) else {}


@contextmanager
def reading_description(source: str | Path) -> Iterator[None]:
    """Any failure to read a stored model description is one :class:`CheckpointError` naming ``source``."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, MhcError) as err:
        raise CheckpointError(f"'{source}' has an invalid model description ({err})") from None


def net_from_description(description: Any, source: str | Path, state: dict[str, torch.Tensor] | None = None) -> MultiHeadNet:
    """Rebuild the network from its plain-data description, through our own registries. With
    the stored ``state``, the described network is built on the meta device first (no memory)
    and must hold exactly its keys and shapes: a description cannot make the loader allocate
    more than the weights stored with it."""
    check_description(description, source)
    if state is not None:
        with reading_description(source), torch.device("meta"):
            shell = MultiHeadNet.from_config(description)
        check_shapes(shell, state, source)
    with reading_description(source):
        return MultiHeadNet.from_config(description)


def check_shapes(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """The keys and shapes of ``state`` are those of ``net``'s state dict, else a :class:`CheckpointError`."""
    expected = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if expected == found:
        return
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = [f"{k} {list(found[k])} vs {list(expected[k])}" for k in expected if k in found and found[k] != expected[k]]
    problems = [f"missing keys {missing[:3]}" if missing else "", f"unexpected keys {unexpected[:3]}" if unexpected else "",
                f"shapes {shapes[0]}" if shapes else ""]
    raise CheckpointError(f"'{source}': the weights do not fit the described model ({'; '.join(p for p in problems if p)})")


def _load_export(folder: Path) -> MultiHeadNet:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, config = folder / EXPORT_WEIGHTS, folder / EXPORT_CONFIG
    description = read_export_config(folder)
    if not weights.is_file():
        files = description.get("files") or []
        held = f" (it holds {', '.join(files)}; export with format=safetensors for mhc.load)" if files else ""
        raise CheckpointError(f"export folder '{folder}' has no {EXPORT_WEIGHTS}{held}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"export folder '{folder}': {weights.name} is corrupt or truncated ({first_line(err)})") from None
    net = net_from_description(description.get("net"), config, state)
    load_weights(net, state, weights)
    return net


def read_export_config(folder: str | Path) -> dict[str, Any]:
    """An export folder's ``config.json`` as a dict; a missing or unreadable one is a :class:`CheckpointError`."""
    config = Path(folder) / EXPORT_CONFIG
    if not config.is_file():
        raise CheckpointError(f"export folder '{folder}' has no {EXPORT_CONFIG}")
    try:
        description = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError) as err:  # ValueError: bad JSON or bad UTF-8; RecursionError: nesting
        raise CheckpointError(f"export folder '{folder}': {EXPORT_CONFIG} is corrupt ({first_line(err)})") from None
    if not isinstance(description, dict) or not isinstance(description.get("net"), dict):
        raise CheckpointError(f"export folder '{folder}': {EXPORT_CONFIG} holds no model description (expected an object with 'net')")
    return description


def save_export(net: MultiHeadNet, folder: str | Path, extra: dict[str, Any] | None = None, weights: bool = True) -> Path:
    """Write ``model.safetensors`` (unless ``weights=False``) and ``config.json`` (the model
    description, plus ``extra``) to ``folder``; each file is replaced atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights:
        state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
        with atomic_path(folder / EXPORT_WEIGHTS) as tmp:
            save_file(state, str(tmp))
    with atomic_path(folder / EXPORT_CONFIG) as tmp:
        tmp.write_text(json.dumps({"net": net.config(), **(extra or {})}, indent=2), encoding="utf-8")
    return folder


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is fsynced and renamed into
    place, so a crash or a full disk mid-write never harms an existing ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(net: MultiHeadNet, path: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``net`` as a weights-only checkpoint that :func:`load`, ``mhc-eval`` and
    ``mhc-analyze`` read like a training checkpoint (no optimizer or loop state)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "mhc": {"format": CHECKPOINT_FORMAT, "net": net.config(), "metrics": metrics or {}},
        "state_dict": {f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def update_checkpoint(source: str | Path, path: str | Path, *, tasks: Iterable[TaskSpec] | None = None,
                      weights: Mapping[str, torch.Tensor] | None = None, metrics: Mapping[str, Any] | None = None,
                      **records: Any) -> Path:
    """Copy checkpoint ``source`` to ``path`` (which may be ``source``: replaced atomically) with
    new specs of its ``tasks`` in the model description, new values of some of the network's
    ``weights`` (keys as ``net.state_dict()`` names them), the validation ``metrics`` the model
    now has, and ``records`` (plain data) under ``mhc.<name>``; everything else (other weights,
    the training state) is kept as it is."""
    checkpoint = read_checkpoint(source)
    if tasks is not None:
        described = {t.name: t for t in tasks}
        stored = checkpoint["mhc"]["net"]["tasks"]
        if sorted(described) != sorted(d["name"] for d in stored):
            raise CheckpointError(f"checkpoint '{source}' has the tasks {sorted(d['name'] for d in stored)}, "
                                  f"not {sorted(described)}")
        checkpoint["mhc"]["net"]["tasks"] = [described[d["name"]].to_dict() for d in stored]
        net_config = checkpoint.get("hyper_parameters", {}).get("net_config")
        if isinstance(net_config, dict) and "tasks" in net_config:  # what the loggers and resume show, kept in step
            net_config["tasks"] = checkpoint["mhc"]["net"]["tasks"]
    for key, value in (weights or {}).items():
        if f"net.{key}" not in checkpoint["state_dict"]:
            raise CheckpointError(f"checkpoint '{source}' has no weight 'net.{key}'")
        checkpoint["state_dict"][f"net.{key}"] = value.detach().cpu()
    if metrics is not None:
        checkpoint["mhc"]["metrics"] = dict(metrics)
    checkpoint["mhc"].update(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def save_backbone(net: MultiHeadNet, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a pretrained backbone for ``backbone.pretrained=FOLDER``: ``backbone.safetensors``
    (the backbone's own keys, as a classifier's backbone holds them) and ``backbone.json``
    (its description and processor, which ``mhc-train`` checks against its config)."""
    from safetensors.torch import save_file

    from mhc.model.backbones.registry import PRETRAINED_CONFIG, PRETRAINED_WEIGHTS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    description = net.config()
    state = {k: v.detach().contiguous().cpu() for k, v in net.backbone.state_dict().items()}
    with atomic_path(folder / PRETRAINED_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    with atomic_path(folder / PRETRAINED_CONFIG) as tmp:
        tmp.write_text(json.dumps({"format": CHECKPOINT_FORMAT, "backbone": description["backbone"],
                                   "processor": description["processor"], **(extra or {})}, indent=2))
    return folder
