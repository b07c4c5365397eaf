"""Bad training inputs through ``mhc-train``'s entry point: exit code 1, one ``error:`` line
naming the file, row and column (the last line on stderr, no traceback, also when a
DataLoader worker hits it), nothing written to the new run's folder and the files of an earlier run beside it untouched.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.test_manifest import write

HEADER = "image,shape,flag"
ROWS = "".join(f"img/{i}.png,{'circle' if i % 2 else 'square'},{'yes' if i < 3 else 'no'}\n" for i in range(6))
SAVED = {"checkpoints/last.ckpt": b"an earlier run's weights", "checkpoints/best-epoch03.ckpt": b"its best epoch"}
EARLIER = "runs/earlier"  # an earlier run's folder beside the new run's, runs/new

# name -> (manifest texts that replace the good ones, extra overrides, the line after "error: ")
CASES: dict[str, tuple[dict[str, str], list[str], str]] = {
    "missing manifest": ({}, ["data.val=<dir>/nowhere.csv"], r"<dir>/nowhere\.csv: manifest file not found"),
    "label outside the vocabulary": (
        {"val": f"{HEADER}\nimg/0.png,circle,yes\nimg/1.png,[/hexagon],no\n"},  # rich markup must print as is
        [],
        r"<dir>/val\.csv: row 2, column 'shape': unknown class '\[/hexagon\]' for task 'shape'; "
        r"expected one of \['circle', 'square'\]",
    ),
    "column no task claims": (
        {"val": f"{HEADER},colour\nimg/0.png,circle,yes,red\n"},
        [],
        r"<dir>/val\.csv: unknown column 'colour'; the tasks are \['shape', 'flag'\]",
    ),
    "header-only split": ({"val": f"{HEADER}\n"}, [], r"<dir>/val\.csv: the manifest has no data rows"),
    "truncated image read in a worker": (
        {"train": f"{HEADER}\n{ROWS}img/truncated.png,circle,no\n"},
        ["data.num_workers=2"],
        r"<dir>/train\.csv: row 7, column 'image': image '<dir>/img/truncated\.png' could not be read "
        r"\(image file is truncated\)",
    ),
    "non-integer epoch count": (
        {}, ["trainer.max_epochs=x"], r"trainer\.max_epochs must be an integer >= 1 \(or -1 with trainer\.max_steps set\), got 'x'"),
    "negative epoch count": (
        {}, ["trainer.max_epochs=-1"], r"trainer\.max_epochs must be an integer >= 1 \(or -1 with trainer\.max_steps set\), got -1"),
    "negative learning rate": ({}, ["optimizer.lr=-0.1"], r"optimizer\.lr must be a number > 0, got -0\.1"),
    "negative weight decay": ({}, ["optimizer.weight_decay=-1e-4"], r"optimizer\.weight_decay must be a number >= 0, got -0\.0001"),
    "no gradient accumulation": (
        {}, ["trainer.accumulate_grad_batches=0"], r"trainer\.accumulate_grad_batches must be an integer >= 1, got 0"),
    "negative seed": ({}, ["seed=-1"], r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    "a layer of width 0": ({}, ["backbone.widths=[0]"], r"backbone\.widths must be a non-empty list, each an integer >= 1, got \[0\]"),
    "negative backbone learning-rate scale": ({}, ["backbone_lr_scale=-1"], r"backbone_lr_scale must be a number >= 0, got -1\.0"),
    "negative class weight": (
        {}, ["+tasks.shape.class_weights=[-1,1]"], r"task 'shape': class_weights must be numbers >= 0, got \[-1\.0, 1\.0\]"),
    "task option of the wrong type on data that defines its tasks": (
        {}, ["+tasks.shape.weight=heavy"], r"tasks\.shape\.weight: Value 'heavy' of type 'str' could not be converted to Float"),
    "weighting option out of bounds": ({}, ["weighting=gradnorm", "weighting.alpha=-1"], r"weighting=gradnorm: alpha must be >= 0, got -1"),
    "unknown scheduler option": (
        {}, ["+scheduler.warmup=0.1"],
        r"scheduler: unknown option\(s\) \['warmup'\] for mhc\.training\.schedules\.warmup_cosine; "
        r"its options are \['min_lr_ratio', 'warmup_fraction'\]"),
    "misspelt checkpoint monitor": (
        {}, ["callbacks.model_checkpoint.monitor=val/mean/acx"],
        r"ModelCheckpoint monitors 'val/mean/acx', which validation does not log; similar: \['val/mean/acc', .*\] "
        r"\(val/<task>/<metric>, val/mean/<metric>, val/loss, val/delta_m with delta_m\.baseline\)"),
    "Hugging Face backbone without a model": (
        {}, ["backbone=hf"], r"backbone\.model: this backbone needs a value \(backbone=hf backbone\.model=\.\.\.\)"),
    "misspelt timm model": (
        {}, ["backbone=timm", "backbone.model=convnxt_tiny"],
        r"backbone\.model: timm has no model 'convnxt_tiny'; similar: \['convnext_tiny', 'convnextv2_tiny', .*\]"),
    "torchvision weights that do not exist": (
        {}, ["backbone=resnet18", "backbone.weights=IMAGENET9"],
        r"backbone\.weights: 'IMAGENET9' is neither a file nor one of resnet18's torchvision weights \['IMAGENET1K_V1', 'DEFAULT'\]"),
    "LoRA on a backbone without linear layers": (
        {}, ["backbone=cnn", "+backbone.lora.r=4"], r"backbone\.lora: the backbone has no linear layers to adapt"),
    # rejected by Hydra while it composes the config: its message, on one line (mhc.cli.hydra_errors)
    "non-integer seed": ({}, ["seed=abc"], r"seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    "misspelt option": ({}, ["trainer.max_epoch=3"], r"trainer\.max_epoch: no such option; did you mean trainer\.max_epochs\?"),
}


def make_folder(folder: Path, manifests: dict[str, str]) -> Path:
    """Seven small images and a truncated one, the train/val manifests (good unless given), and
    an earlier run's files in ``runs/earlier/``."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir()
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
    (folder / "img" / "truncated.png").write_bytes((folder / "img" / "6.png").read_bytes()[:200])
    for split in ("train", "val"):
        write(folder, f"{split}.csv", manifests.get(split, HEADER + "\n" + ROWS))
    for name, content in SAVED.items():
        (folder / EARLIER / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / EARLIER / name).write_bytes(content)
    return folder


def train_command(folder: Path, overrides: list[str]) -> list[str]:
    small = [] if any(o.startswith("backbone") for o in overrides) else ["backbone.widths=[8,16]"]  # the default cnn's
    return [
        "mhc-train", "data=manifest", f"data.train={folder / 'train.csv'}",
        f"data.val={folder / 'val.csv'}", "data.image_size=[16,16]", "data.batch_size=4", *small,
        "trainer.max_epochs=1", "test=false", "~callbacks.progress_bar", f"hydra.run.dir={folder / 'runs' / 'new'}",
        *[o.replace("<dir>", str(folder)) for o in overrides],
    ]


def run_train(folder: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """``mhc-train``'s entry point run in this process (each start-up of a new one costs seconds
    of imports), from ``folder``, with its exit code and what it wrote to stdout and stderr."""
    from mhc.cli import train as command

    argv = train_command(folder, overrides)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        patch.setattr(sys, "argv", argv)
        patch.chdir(folder)
        try:
            command.main()
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 1
        except BaseException:  # an escaped exception is what a real process would print as a traceback
            traceback.print_exc(file=stderr)
            code = 1
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every case's folder and finished ``mhc-train`` run (a real process:
    ``test_a_bad_input_ends_the_real_process_with_code_1``)."""
    finished = {}
    for name, (manifests, overrides, _) in CASES.items():
        folder = make_folder(tmp_path_factory.mktemp("bad_input"), manifests)
        finished[name] = (folder, run_train(folder, overrides))
    return finished


def test_a_bad_input_ends_the_real_process_with_code_1(tmp_path: Path) -> None:
    manifests, overrides, pattern = CASES["missing manifest"]
    folder = make_folder(tmp_path, manifests)
    proc = subprocess.run([sys.executable, "-m", "mhc.cli.train", *train_command(folder, overrides)[1:]],
                          capture_output=True, text=True, cwd=folder, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.fullmatch("error: " + pattern.replace("<dir>", re.escape(str(folder))), proc.stderr.rstrip().splitlines()[-1])
    assert_earlier_run_untouched(folder)


def assert_earlier_run_untouched(folder: Path) -> None:
    for name, content in SAVED.items():
        assert (folder / EARLIER / name).read_bytes() == content
    assert sorted(p.name for p in (folder / EARLIER / "checkpoints").iterdir()) == sorted(Path(n).name for n in SAVED)
    assert not list(folder.glob("runs/new/checkpoints/*"))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_with_one_error_line(runs: dict, name: str) -> None:
    folder, proc = runs[name]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().splitlines()[-1] == errors[0], proc.stderr
    expected = "error: " + CASES[name][2].replace("<dir>", re.escape(str(folder)))
    assert re.fullmatch(expected, errors[0]), f"\n  line:    {errors[0]}\n  pattern: {expected}"
    assert_earlier_run_untouched(folder)
    assert not (folder / "runs" / "new").exists()  # the failed run left no folder


def test_a_task_option_reaches_the_model_on_data_that_defines_its_tasks(tmp_path: Path) -> None:
    """``+tasks.<name>.<option>=...`` on a manifest: the tasks come from the file, not a config."""
    import mhc

    folder = make_folder(tmp_path, {})
    finished = run_train(folder, ["+tasks.shape.weight=2", f"hydra.run.dir={folder / 'new'}"])
    assert finished.returncode == 0, finished.stderr[-2000:]
    model = mhc.load(folder / "new" / "checkpoints" / "last.ckpt")
    assert model.tasks["shape"].weight == 2.0 and model.tasks["flag"].weight == 1.0
