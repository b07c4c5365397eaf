"""What training steps read, recorded from inside ``mhc-train`` runs (a callback added through
``+callbacks``), so tests can check which samples each step and process read across kills and
resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def sample_ids(batch: dict) -> list:
    """The labelled samples of a batch (filler is unlabelled): their stored rows where the batch
    has them (shards), else their pixel sums."""
    labelled = torch.stack(list(batch["label_mask"].values())).any(0)
    if "row" in batch:
        return batch["row"][labelled].tolist()
    return [round(float(s), 2) for s in batch["image"].float().sum((1, 2, 3))[labelled]]


class StepRecorder:
    """A callback writing each training step's samples to ``<folder>/steps<rank>.jsonl``, and
    ending the process abruptly (as a killed job ends) once ``kill_after`` steps are done."""

    def __new__(cls, folder: str, kill_after: int = 0):
        import pytorch_lightning as pl

        class _Recorder(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                line = {"epoch": trainer.current_epoch, "step": trainer.global_step, "batch": batch_idx,
                        "samples": sample_ids(batch)}
                with open(Path(folder) / f"steps{trainer.global_rank}.jsonl", "a") as out:
                    out.write(json.dumps(line) + "\n")
                if kill_after and trainer.global_step >= kill_after:
                    os._exit(9)

        return _Recorder()


def run_recorded(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``mhc-train`` with a :class:`StepRecorder` writing into ``folder``, its run folder ``folder/run``."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "mhc.cli.train", "backbone.widths=[8,16]", "callbacks.progress_bar=null", "test=false",
         "+callbacks.rec._target_=tests.data.recording.StepRecorder", f"+callbacks.rec.folder={folder}", *overrides,
         f"hydra.run.dir={folder / 'run'}"],
        capture_output=True, text=True, timeout=300)


def recorded(folder: Path, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in (folder / f"steps{rank}.jsonl").read_text().splitlines()]


def killed_and_resumed(folder: Path, *overrides: str, ranks: int = 1) -> tuple[list[list[dict]], list[list[dict]]]:
    """Each process's recorded steps of a 2-epoch run killed at step 3, up to its last checkpoint
    (step 2), and of the run resumed from that checkpoint."""
    proc = run_recorded(folder, *overrides, "trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=2",
                        "+callbacks.rec.kill_after=3")
    assert proc.returncode == 9, proc.stderr[-3000:]
    last = folder / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    killed = [[line for line in recorded(folder, rank) if line["step"] <= 2] for rank in range(ranks)]
    for rank in range(ranks):
        (folder / f"steps{rank}.jsonl").unlink()
    proc = run_recorded(folder, *overrides, "trainer.max_epochs=2", f"resume={last}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return killed, [recorded(folder, rank) for rank in range(ranks)]
