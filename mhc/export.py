"""Export a trained model to a self-describing folder: safetensors, ONNX and ``torch.export``.

The folder holds the chosen model files, ``config.json`` (the model description: architecture,
tasks and label maps, preprocessing, tokenizer; the files the folder holds; the graph formats'
input and output names) and ``README.md``, a model card. ``mhc.load(folder)`` reads the
safetensors weights; :class:`OnnxModel` runs ``model.onnx`` under onnxruntime with the same
preprocessing and decoding as :meth:`mhc.MultiHeadNet.predict`::

    from mhc.export import export_checkpoint, predict_onnx
    folder = export_checkpoint("outputs/train/<date>/checkpoints/last.ckpt", "export", ["safetensors", "onnx"])
    probs = predict_onnx(folder, ["scene.png"])          # {task: probabilities [B, C]}

The graph formats take one input, ``input``: images float [B, 3, H, W] in [0, 1] (the network
normalises them itself) or token ids int64 [B, L] with ``L <= max_length``; they return one
logits tensor per task, in task order. Batch size (and sequence length) are dynamic.
"""

from __future__ import annotations

import copy
import io
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from mhc.calibration import report_by_split
from mhc.errors import CheckpointError, ConfigError, DataError, MhcError
from mhc.io import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    atomic_path,
    load_weights,
    net_from_description,
    net_state,
    read_checkpoint,
    read_export_config,
    reading_description,
    save_export,
)
from mhc.model.backbones.adapters import uses_lora
from mhc.model.net import MultiHeadNet
from mhc.predictor import Predictor, TaskPrediction
from mhc.processing.processors import TextProcessor, processor_of
from mhc.tasks import tasks_from_dicts
from mhc.text import markdown_cell

FORMATS: dict[str, str] = {"safetensors": EXPORT_WEIGHTS, "onnx": "model.onnx", "torch_export": "model.pt2"}
MODEL_CARD = "README.md"
INPUT_NAME = "input"
METRIC_ORDER = ("acc", "f1", "auroc", "loss")


class ExportError(MhcError):
    """A backbone cannot be traced into a graph format (ONNX, ``torch.export``)."""


class TaskLogits(nn.Module):
    """``net`` with a graph-friendly output: a tuple of logits, one per task in ``net.tasks`` order."""

    def __init__(self, net: MultiHeadNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, input: Tensor) -> tuple[Tensor, ...]:  # the argument's name is the graph input's name
        logits = self.net(input)
        return tuple(logits[name] for name in self.net.tasks)


def parse_formats(value: str | Iterable[str]) -> list[str]:
    """``format`` as a list of known names, in :data:`FORMATS` order: one name or a list of them."""
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ConfigError(f"format: expected one or more of {list(FORMATS)}, got {unknown[0] if unknown else '[]'!r}")
    return [name for name in FORMATS if name in names]


# ---- the traced graph -----------------------------------------------------------------------


def max_tokens(net: MultiHeadNet) -> int:
    """The longest token sequence a token backbone reads."""
    return int(net.backbone.max_length)


def input_spec(net: MultiHeadNet) -> dict[str, Any]:
    """Name, dtype and shape (symbolic ``batch``/``length``) of the graph input."""
    if net.takes_tokens:
        return {"name": INPUT_NAME, "dtype": "int64", "shape": ["batch", "length"], "max_length": max_tokens(net),
                "pad_id": int(net.backbone.pad_id), "vocab_size": int(net.backbone.vocab_size)}
    height, width = net.processor.size
    return {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, height, width], "range": [0.0, 1.0]}


def example_input(net: MultiHeadNet, batch: int = 2) -> Tensor:
    """A graph input to trace with: images in [0, 1], or full-length token ids with padding in the
    last row. Drawn from a private generator, so exporting leaves the global RNG alone."""
    generator = torch.Generator().manual_seed(0)
    if not net.takes_tokens:
        return torch.rand(batch, 3, *net.processor.size, generator=generator)
    vocab = net.backbone.vocab_size
    length = max_tokens(net)
    ids = torch.randint(min(3, vocab - 1), vocab, (batch, length), generator=generator)
    ids[-1, length // 2 :] = int(net.backbone.pad_id)
    return ids


def dynamic_shapes(net: MultiHeadNet) -> dict[str, dict[int, Any]]:
    """A dynamic batch dimension, and a dynamic length up to ``max_length`` for token ids."""
    from torch.export import Dim

    dims = {0: Dim("batch", min=1)}
    if net.takes_tokens:
        dims[1] = Dim("length", min=1, max=max_tokens(net))
    return {INPUT_NAME: dims}


def trace(net: MultiHeadNet) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`TaskLogits` with dynamic shapes; both graph formats start here."""
    if INPUT_NAME in net.tasks:
        raise ExportError(f"task '{INPUT_NAME}' has the name of the graph input; rename the task to export a graph")
    module = TaskLogits(net).eval()
    try:
        return torch.export.export(module, (example_input(net),), dynamic_shapes=dynamic_shapes(net), strict=False)
    except Exception as err:  # noqa: BLE001 - torch.export raises many kinds; all mean "cannot trace"
        detail = " ".join(str(err).split())[:300]
        raise ExportError(
            f"torch.export cannot trace backbone '{net.backbone_config.get('name')}' with a dynamic batch{' and length' if net.takes_tokens else ''} "
            f"({detail}); export format=safetensors instead"
        ) from None


def save_torch_export(program: torch.export.ExportedProgram, path: Path) -> None:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)  # to memory first: torch.export.save wants a .pt2 name, the temp file has none
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def save_onnx(net: MultiHeadNet, program: torch.export.ExportedProgram, path: Path) -> int:
    """Write ``model.onnx`` from the traced program (weights inside, no external data); its opset."""
    try:
        import onnxscript  # noqa: F401 - the exporter's dependency; fail here with a clear message
    except ImportError:
        raise ConfigError("format=onnx needs onnx and onnxscript: pip install 'mhc[export]'") from None
    try:
        with quiet("onnxscript", "onnx_ir"):
            onnx_program = torch.onnx.export(program, (example_input(net),), input_names=[INPUT_NAME],
                                             output_names=list(net.tasks), dynamic_shapes=dynamic_shapes(net),
                                             dynamo=True, verbose=False)
    except Exception as err:  # noqa: BLE001 - the exporter wraps every failure in its own types
        detail = " ".join(str(err).split())[:300]
        raise ExportError(f"ONNX export of backbone '{net.backbone_config.get('name')}' failed ({detail})") from None
    with atomic_path(path) as tmp:
        onnx_program.save(tmp, external_data=False)
    return int(onnx_program.model.opset_imports.get("", 0))


@contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Hide the INFO records of the ONNX optimiser passes (Hydra's logging would print them all)."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


# ---- the folder -----------------------------------------------------------------------------


def export_model(
    net: MultiHeadNet,
    folder: str | Path,
    formats: Sequence[str] = ("safetensors",),
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    run_config: Mapping[str, Any] | None = None,
    source: str | Path | None = None,
    calibration: Mapping[str, Any] | None = None,
    head_selection: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``net`` to ``folder`` in ``formats`` with ``config.json`` and the model card; LoRA
    adapters are merged into the exported weights. A ``calibration`` report
    (:mod:`mhc.api.calibrate`) adds its tables to the card and its figures beside it; a
    ``head_selection`` report (:mod:`mhc.training.selection`) its table.

    Every file is replaced atomically; model files of formats not chosen this time (and figures
    of a calibration it no longer has) are removed, so the folder always matches its ``config.json``.
    """
    formats = parse_formats(formats)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if uses_lora(net.backbone_config):  # adapters merged into the weights: a plain model, the same outputs
        net = copy.deepcopy(net).merge_adapters()
    if any(p.device.type != "cpu" for p in net.parameters()):
        net = copy.deepcopy(net).cpu()  # graphs are traced on CPU; the caller's model stays where it is
    was_training = net.training
    try:
        description = write_model_files(net.eval(), folder, formats, metrics, source)
        description["files"] += write_calibration_figures(folder, calibration)
        save_export(net, folder, description, weights="safetensors" in formats)
        with atomic_path(folder / MODEL_CARD) as tmp:
            tmp.write_text(model_card(net, description, metrics or {}, run_config, calibration, head_selection),
                           encoding="utf-8")
    finally:
        net.train(was_training)
    return folder


def write_model_files(net: MultiHeadNet, folder: Path, formats: Sequence[str],
                      metrics: Mapping[str, Mapping[str, float]] | None, source: str | Path | None) -> dict[str, Any]:
    """Write the graph formats and remove model files of formats not chosen; the folder's description."""
    description: dict[str, Any] = {
        "files": [FORMATS[f] for f in formats] + [EXPORT_CONFIG, MODEL_CARD], "outputs": list(net.tasks),
        "input": input_spec(net), "parameters": parameter_count(net),
        "source": {"checkpoint": str(source) if source else None, "metrics": dict(metrics or {})},
    }
    if "onnx" in formats or "torch_export" in formats:
        program = trace(net)
        outputs = {name: ["batch", task.num_outputs] for name, task in net.tasks.items()}
        if "torch_export" in formats:
            save_torch_export(program, folder / FORMATS["torch_export"])
            description["torch_export"] = {"file": FORMATS["torch_export"], "input": INPUT_NAME, "outputs": outputs}
        if "onnx" in formats:
            opset = save_onnx(net, program, folder / FORMATS["onnx"])
            description["onnx"] = {"file": FORMATS["onnx"], "input": INPUT_NAME, "outputs": outputs, "opset": opset}
    for name, file in FORMATS.items():
        if name not in formats:
            (folder / file).unlink(missing_ok=True)
    return description


def export_checkpoint(ckpt: str | Path, folder: str | Path, formats: Sequence[str] = ("safetensors",)) -> Path:
    """Export a checkpoint, with its validation metrics and training config in the model card."""
    formats = parse_formats(formats)
    checkpoint = read_checkpoint(ckpt)
    net = net_from_description(checkpoint["mhc"].get("net"), ckpt)
    load_weights(net, net_state(checkpoint), ckpt)
    return export_model(net, folder, formats, metrics=checkpoint["mhc"].get("metrics"),
                        run_config=checkpoint["mhc"].get("config"), source=ckpt,
                        calibration=checkpoint["mhc"].get("calibration"),
                        head_selection=checkpoint["mhc"].get("head_selection"))


def default_folder(ckpt: str | Path) -> Path:
    """``<run folder>/export``: beside ``checkpoints/`` for a training checkpoint, else beside the file."""
    ckpt = Path(ckpt)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run / "export"


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---- the model card -------------------------------------------------------------------------


def model_card(net: MultiHeadNet, description: Mapping[str, Any], metrics: Mapping[str, Mapping[str, float]],
               run_config: Mapping[str, Any] | None, calibration: Mapping[str, Any] | None = None,
               head_selection: Mapping[str, Any] | None = None) -> str:
    """``README.md`` of an export folder: tasks, validation metrics, per-head selection, calibration
    and decisions (when there were), input, data, files, usage, config."""
    backbone = net.backbone_config.get("name", "?")
    sections = [
        f"# Multi-head classifier: {len(net.tasks)} task{'s' if len(net.tasks) > 1 else ''} on {with_article(backbone)} backbone",
        f"One shared `{backbone}` backbone with one classification head per task ({', '.join(net.tasks)}), "
        f"{description['parameters']:,} parameters in all, trained with `mhc`.",
        "## Tasks\n\n" + tasks_table(net),
        "## Validation metrics\n\n" + (metrics_table(metrics) if metrics else "The checkpoint records no validation metrics."),
        *([head_selection_text(head_selection)] if head_selection else []),
        *calibration_sections(net, calibration),
        "## Input\n\n" + input_text(net),
        "## Data\n\n" + data_text(run_config, net.takes_tokens),
        "## Files\n\n" + "\n".join(f"- `{file}`" for file in description["files"]),
        "## Usage\n\n" + usage_text(description),
        "## Training configuration\n\n" + config_text(run_config),
    ]
    return "\n\n".join(sections) + "\n"


def with_article(name: str) -> str:
    """``name`` in backticks after its indefinite article: an `airbench`, a `cnn`."""
    return f"{'an' if name[:1].lower() in 'aeio' else 'a'} `{name}`"


def tasks_table(net: MultiHeadNet) -> str:
    rows = ["| task | kind | classes | head |", "|---|---|---|---|"]
    for task in net.tasks.values():
        classes = ", ".join(map(markdown_cell, task.classes[:20])) + (f", ... ({task.num_classes} classes)" if task.num_classes > 20 else "")
        head = ("masked" if task.masked else "unmasked") + (f", classes allowed by `{task.parent}`" if task.parent else "")
        rows.append(f"| {task.name} | {task.kind} | {classes} | {head} |")
    return "\n".join(rows)


def metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    names = sorted({m for values in metrics.values() for m in values},
                   key=lambda m: (METRIC_ORDER.index(m) if m in METRIC_ORDER else len(METRIC_ORDER), m))
    rows = ["| task | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for task, values in metrics.items():
        rows.append(f"| {task} | " + " | ".join(f"{values[m]:.4f}" if m in values else "-" for m in names) + " |")
    return "\n".join(rows)


def head_selection_text(report: Mapping[str, Any]) -> str:
    """Per head: the checkpoint's epoch and metric, the head's own best epoch and the metric with
    its weights from then, and whether they were kept (``callbacks=per_head``)."""
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "-"

    rows = ["| task | checkpoint epoch | val | own best epoch | val with its own best head | kept | test before | test after |",
            "|---|---:|---:|---:|---:|---|---:|---:|"]
    for task, entry in report.items():
        test = entry.get("test") or {}
        rows.append(f"| {task} | {entry['checkpoint_epoch']} | {cell(entry['checkpoint'])} | {entry['own_best_epoch']} | "
                    f"{cell(entry['swapped'])} | {'yes' if entry['kept'] else 'no'} | {cell(test.get('checkpoint'))} | "
                    f"{cell(test.get('final'))} |")
    return ("## Per-head selection\n\nThe shared backbone is the best mean epoch's; a head's weights from its own best "
            "validation epoch replaced the checkpoint's where they score better on validation with that backbone "
            "(test figures are reported, never used to choose):\n\n" + "\n".join(rows))


def write_calibration_figures(folder: Path, calibration: Mapping[str, Any] | None) -> list[str]:
    """The calibration report's figures as PNG files in ``folder`` (stale ones removed); their names."""
    from mhc.tracking import pyplot
    from mhc.training.figures import CALIBRATION_FIGURES

    written = []
    for name, draw in CALIBRATION_FIGURES.items():
        path = folder / f"{name}.png"
        if not calibration or not calibration.get("tasks"):
            path.unlink(missing_ok=True)
            continue
        figure = draw(calibration["tasks"])
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=100, format="png")
        pyplot().close(figure)
        written.append(path.name)
    return written


def calibration_sections(net: MultiHeadNet, calibration: Mapping[str, Any] | None) -> list[str]:
    """The model card's calibration, thresholds and abstention sections (none when uncalibrated)."""
    if not calibration or not calibration.get("tasks"):
        return ["## Calibration\n\nUncalibrated: probabilities are the network's softmax and sigmoid outputs, and binary "
                "and multilabel outputs are decided at their configured thresholds (0.5 unless set). `mhc-calibrate` "
                "fits temperatures and thresholds on a validation split."]
    split, tasks = calibration["split"], calibration["tasks"]
    rows = ["| task | split | ECE before | ECE after | Brier before | Brier after | temperature |", "|---|---|---:|---:|---:|---:|---|"]
    for name, entry in tasks.items():
        temperature = ", ".join(f"{t:.3g}" for t in entry["fitted"]["temperature"] or []) or "1"
        for where, scores in ((where, scored[name]) for where, scored in report_by_split(calibration).items() if name in scored):
            rows.append(f"| {name} | {where} | " + " | ".join(f"{scores[w][k]:.4f}" for k in ("ece", "brier") for w in ("before", "after"))
                        + f" | {temperature} |")
    sections = [f"## Calibration\n\nFitted on the `{split}` split by {calibration['method']} scaling (`mhc-calibrate`); "
                "every runtime decodes with it. Expected calibration error (15 bins) and Brier score before and after:\n\n"
                + "\n".join(rows) + "\n\n![reliability diagrams](reliability.png)"]
    sections.append("## Decision thresholds\n\n" + thresholds_text(net, tasks, split))
    sections.append("## Abstention\n\n" + abstention_text(net, tasks, split))
    return sections


def thresholds_text(net: MultiHeadNet, tasks: Mapping[str, Any], split: str) -> str:
    """Per binary or multilabel output: its threshold and the F1 it gives on the calibration split."""
    rows = ["| task | class | threshold | F1 at 0.5 | F1 at threshold |", "|---|---|---:|---:|---:|"]
    for name, task in net.tasks.items():
        entry = tasks.get(name, {})
        if task.kind == "multiclass" or "f1" not in entry.get("after", {}):
            continue
        names = task.classes[1:] if task.kind == "binary" else task.classes
        for cls, cut, old, new in zip(names, task.decision_thresholds(), entry["before"]["f1"], entry["after"]["f1"]):
            rows.append(f"| {name} | {markdown_cell(cls)} | {cut:.3f} | {old:.4f} | {new:.4f} |")
    if len(rows) == 2:
        return "Multiclass heads only: each predicts its most probable class."
    objectives = ", ".join(f"`{t.name}`: `{t.threshold}`" for t in net.tasks.values() if t.kind != "multiclass")
    return (f"A binary or multilabel class is predicted at or above its threshold, chosen on `{split}` for each task's "
            f"objective ({objectives}); `predict(threshold=...)` or a request's `threshold` overrides them.\n\n"
            + "\n".join(rows))


def abstention_text(net: MultiHeadNet, tasks: Mapping[str, Any], split: str) -> str:
    """Per multiclass or binary head: its ``min_confidence`` and the coverage/accuracy curve."""
    shown = (1.0, 0.9, 0.8, 0.7, 0.5)
    rows = ["| task | min_confidence | " + " | ".join(f"{c:.0%} decided" for c in shown) + " |",
            "|---|---:|" + "---:|" * len(shown)]
    for name, task in net.tasks.items():
        curve = tasks.get(name, {}).get("coverage")
        if not curve:
            continue
        at = dict(zip(curve["coverage"], zip(curve["accuracy"], curve["confidence"])))
        cells = [f"{at[c][0]:.3f} (p >= {at[c][1]:.2f})" if c in at else "-" for c in shown]
        rows.append(f"| {name} | {task.min_confidence:g} | " + " | ".join(cells) + " |")
    if len(rows) == 2:
        return "No multiclass or binary head."
    return (f"A multiclass or binary head answers no decision (`None`) where its top probability is under its "
            f"`min_confidence` (0: always decides); `predict(min_confidence=...)` or a request's `min_confidence` "
            f"overrides it. Accuracy on `{split}` of the samples each head still decides, keeping the most confident "
            "share, with the confidence that keeps them:\n\n" + "\n".join(rows) + "\n\n![coverage](coverage.png)")


def input_text(net: MultiHeadNet) -> str:
    if net.takes_tokens:
        tokenizer = net.tokenizer
        text = (f"Token ids, int64 `[batch, length]` with `length <= {max_tokens(net)}`, padded with id "
                f"{input_spec(net)['pad_id']} (padding never changes the outputs).")
        if tokenizer is not None:
            text += (f" Texts are encoded with the saved `{tokenizer.kind}` tokenizer ({tokenizer.vocab_size} ids) and cut "
                     f"to {net.processor.max_length} tokens; `predict` takes strings.")
        return text
    height, width = net.processor.size
    return (f"RGB images, float32 `[batch, 3, {height}, {width}]` with values in [0, 1]; `predict` resizes paths, PIL "
            f"images and arrays to {height}x{width}. The network normalises inside (mean {net.processor.mean}, "
            f"std {net.processor.std}).")


TEXT_OPTIONS = {"tokenizer", "max_length", "min_count", "max_size"}  # a manifest's options that only texts use
IMAGE_OPTIONS = {"image_size", "cache", "mean", "std"}


def data_text(run_config: Mapping[str, Any] | None, takes_tokens: bool = False) -> str:
    """The training data's options, without those of the other input kind (an image model's
    tokenizer settings)."""
    data = (run_config or {}).get("data")
    if not isinstance(data, Mapping):
        return "The checkpoint does not record its training data (it predates saved run configurations)."
    unused = IMAGE_OPTIONS if takes_tokens else TEXT_OPTIONS
    options = [f"- `{key}`: `{value}`" for key, value in data.items()
               if key != "_target_" and key not in unused and value is not None and not isinstance(value, (Mapping, list))]
    return f"`{data.get('_target_', '?')}`\n\n" + "\n".join(options)


def usage_text(description: Mapping[str, Any]) -> str:
    blocks = []
    if EXPORT_WEIGHTS in description["files"]:
        blocks.append('```python\nimport mhc\n\nmodel = mhc.load("path/to/this/folder")\nout = model.predict(inputs)'
                      "          # {task: TaskPrediction(classes, labels, probs)}\n```")
    if "onnx" in description:
        blocks.append("```python\nfrom mhc.export import OnnxModel\n\nout = OnnxModel(\"path/to/this/folder\").predict(inputs)"
                      "   # onnxruntime, same preprocessing and decoding\n```")
    outputs = ", ".join(description["outputs"])
    blocks.append(f"The graph files take `{INPUT_NAME}` and return raw logits, one output per task: {outputs}. "
                  "`model.pt2` loads with `torch.export.load(path).module()`.")
    return "\n\n".join(blocks)


def config_text(run_config: Mapping[str, Any] | None) -> str:
    if not run_config:
        return "The checkpoint does not record its training configuration."
    import yaml

    return "```yaml\n" + yaml.safe_dump(dict(run_config), sort_keys=False).rstrip() + "\n```"


# ---- ONNX Runtime inference -----------------------------------------------------------------


class OnnxModel:
    """``model.onnx`` of an export folder under onnxruntime, with ``predict`` as on :class:`MultiHeadNet`.

    The processor (image resizing, the tokenizer) and the decoding (parent masks, thresholds)
    are the model's own, from ``config.json``: the same :class:`~mhc.predictor.Predictor` as
    ``mhc.load(folder).predict``, with ONNX Runtime computing the logits. No network is built.
    """

    def __init__(self, folder: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        folder = Path(folder)
        description = read_export_config(folder)
        graph = description.get("onnx") or {}
        path = folder / str(graph.get("file", FORMATS["onnx"]))
        if not graph or not path.is_file():
            raise CheckpointError(f"export folder '{folder}' has no {FORMATS['onnx']}; export with format=onnx")
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("ONNX inference needs onnxruntime: pip install 'mhc[export]'") from None
        with reading_description(folder / EXPORT_CONFIG):  # the same checks and message as mhc.load
            tasks = tasks_from_dicts(description["net"]["tasks"])
            processor = processor_of(description["net"])
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise CheckpointError(f"export folder '{folder}': {path.name} is corrupt ({str(err).splitlines()[0][:200]})") from None
        self.output_names = list(graph["outputs"])
        self.input = description.get("input") if isinstance(description.get("input"), dict) else {}
        self.processor = processor
        if isinstance(processor, TextProcessor) and isinstance(self.input.get("vocab_size"), int):
            processor.vocab_size = self.input["vocab_size"]  # the graph's embedding would read past its rows
        self.predictor = Predictor(tasks, processor, self.logits)

    def logits(self, batch: Tensor) -> dict[str, Tensor]:
        """Raw logits per task for a graph input batch (see :func:`input_spec`); token ids longer
        than the graph's ``max_length`` or outside its vocabulary are a :class:`DataError`, as in torch."""
        limit = self.input.get("max_length")
        if self.input.get("dtype") == "int64" and isinstance(limit, int) and batch.shape[-1] > limit:
            raise DataError(f"token ids of length {batch.shape[-1]}; this model reads at most {limit}")
        if isinstance(self.processor, TextProcessor):
            self.processor.check_ids(batch)
        outputs = self.session.run(self.output_names, {INPUT_NAME: batch.cpu().numpy()})
        return {name: torch.from_numpy(out) for name, out in zip(self.output_names, outputs)}

    def predict(self, inputs: Any, batch_size: int = 64, threshold: float | None = None,
                tta: str | None = None, min_confidence: float | None = None) -> dict[str, TaskPrediction]:
        """Class names and probabilities per task, for the inputs and options :meth:`MultiHeadNet.predict` takes."""
        return self.predictor.predict(inputs, batch_size, threshold, tta, min_confidence)


def predict_onnx(folder: str | Path, inputs: Any) -> dict[str, Tensor]:
    """Probabilities [B, C] per task through onnxruntime, laid out as ``mhc.load(folder).predict(inputs)[task].probs``."""
    return {task: prediction.probs for task, prediction in OnnxModel(folder).predict(inputs).items()}
