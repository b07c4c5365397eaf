"""Training order of in-memory and file data (manifests, ``data=hf``, the built-in sets): every
sample once an epoch across DDP processes in equal steps, and a mid-epoch resume that reads
what an uninterrupted run reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch

from mhc.data import ScenesDataModule
from mhc.data.datamodule import EpochSampler, UnlabelledPadding

SCENES = ["data.num_train=150", "data.num_val=40", "data.num_test=40", "data.batch_size=32", "data.missing_fraction=0.3"]


def test_processes_share_each_epoch_exactly_with_filler_past_the_data():
    shares = [list(EpochSampler(150, seed=3, world=4, rank=rank)) for rank in range(4)]
    assert [len(s) for s in shares] == [38] * 4
    everything = sorted(i for share in shares for i in share)
    assert everything == list(range(152))  # 150 samples once, 2 filler indices past them
    sampler = EpochSampler(150, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == sorted(sampler) == list(range(150)) and first != list(sampler)
    sampler.set_epoch(0)
    sampler.resume_at(0, 64)
    assert list(sampler) == first[64:] and list(sampler) == first  # the skip applies to the resumed epoch once


def test_filler_samples_are_gathered_unlabelled(tmp_path):
    data = ScenesDataModule(cache_dir=str(tmp_path), num_train=10, num_val=5, num_test=5)
    data.setup("fit")
    padded = UnlabelledPadding(data.splits["train"])
    batch = padded.gather([8, 9, 10, 11])
    assert torch.equal(batch["image"][2], data.splits["train"][0]["image"])
    masks = torch.stack(list(batch["label_mask"].values()))
    assert not masks[:, 2:].any() and masks[:, :2].any()


class SampleRecorder:
    """A callback (via ``+callbacks``) writing each step's labelled samples (identified by their
    pixel sums), and ending the process abruptly after ``kill_after`` steps."""

    def __new__(cls, folder: str, kill_after: int = 0):
        import pytorch_lightning as pl

        class _Recorder(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                labelled = torch.stack(list(batch["label_mask"].values())).any(0)
                sums = batch["image"].float().sum((1, 2, 3))[labelled]
                line = {"epoch": trainer.current_epoch, "step": trainer.global_step, "batch": batch_idx,
                        "samples": [round(float(s), 2) for s in sums]}
                with open(Path(folder) / f"samples{trainer.global_rank}.jsonl", "a") as out:
                    out.write(json.dumps(line) + "\n")
                if kill_after and trainer.global_step >= kill_after:
                    os._exit(9)

        return _Recorder()


def run(folder: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mhc.cli.train", *SCENES, f"data.cache_dir={cache}", "backbone.widths=[8,16]",
         "callbacks.progress_bar=null", "test=false", "+callbacks.rec._target_=tests.data.test_epoch_sampler.SampleRecorder",
         f"+callbacks.rec.folder={folder}", *overrides, f"hydra.run.dir={folder / 'run'}"],
        capture_output=True, text=True, timeout=300)


def recorded(folder: Path, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in (folder / f"samples{rank}.jsonl").read_text().splitlines()]


def every_sample(cache: Path) -> Counter:
    data = ScenesDataModule(cache_dir=str(cache), num_train=150, num_val=40, num_test=40, missing_fraction=0.3)
    data.setup("fit")
    return Counter(round(float(s), 2) for s in data.splits["train"].gather(list(range(150)))["image"].sum((1, 2, 3)))


def test_a_killed_run_resumes_mid_epoch_as_if_never_stopped(tmp_path):
    """Killed at step 3 after a checkpoint at step 2, resumed: the steps read what an
    uninterrupted run's read, in its order, over two epochs."""
    cache = tmp_path / "cache"
    (tmp_path / "killed").mkdir()
    proc = run(tmp_path / "killed", cache, "trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=2",
               "+callbacks.rec.kill_after=3")
    assert proc.returncode == 9, proc.stderr[-3000:]
    killed = [line for line in recorded(tmp_path / "killed") if line["step"] <= 2]
    (tmp_path / "killed" / "samples0.jsonl").unlink()
    proc = run(tmp_path / "killed", cache, "trainer.max_epochs=2", f"resume={tmp_path / 'killed' / 'run' / 'checkpoints' / 'last.ckpt'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = recorded(tmp_path / "killed")
    assert [line["batch"] for line in resumed] == [2, 3, 4, 0, 1, 2, 3, 4]
    (tmp_path / "straight").mkdir()
    proc = run(tmp_path / "straight", cache, "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line["samples"] for line in killed + resumed] == [line["samples"] for line in recorded(tmp_path / "straight")]
    assert Counter(s for line in killed + resumed if line["epoch"] == 0 for s in line["samples"]) == every_sample(cache)


def test_two_ddp_processes_read_each_sample_once_an_epoch(tmp_path):
    """150 samples over 2 processes in batches of 32: 75 each (3 steps), every sample once an
    epoch (a DistributedSampler would have repeated some and split them unevenly among heads)."""
    cache = tmp_path / "cache"
    proc = run(tmp_path, cache, "trainer=ddp_cpu", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [recorded(tmp_path, rank) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    expected = every_sample(cache)
    for epoch in (0, 1):
        assert Counter(s for lines in ranks for line in lines if line["epoch"] == epoch for s in line["samples"]) == expected
