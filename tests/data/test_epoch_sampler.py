"""Training order of in-memory and file data (manifests, ``data=hf``, the built-in sets): every
sample once an epoch across DDP processes in equal steps, and a mid-epoch resume that reads
what an uninterrupted run reads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from mhc.data import ScenesDataModule
from mhc.data.datamodule import EpochSampler, UnlabelledPadding
from tests.data.recording import killed_and_resumed, recorded, run_recorded

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


def every_sample(cache: Path) -> Counter:
    data = ScenesDataModule(cache_dir=str(cache), num_train=150, num_val=40, num_test=40, missing_fraction=0.3)
    data.setup("fit")
    return Counter(round(float(s), 2) for s in data.splits["train"].gather(list(range(150)))["image"].sum((1, 2, 3)))


def test_a_killed_run_resumes_mid_epoch_as_if_never_stopped(tmp_path):
    """Killed at step 3 after a checkpoint at step 2, resumed: the steps read what an
    uninterrupted run's read, in its order, over two epochs."""
    scenes = [*SCENES, f"data.cache_dir={tmp_path / 'cache'}"]
    (killed,), (resumed,) = killed_and_resumed(tmp_path / "killed", *scenes)
    assert [line["batch"] for line in resumed] == [2, 3, 4, 0, 1, 2, 3, 4]
    proc = run_recorded(tmp_path / "straight", *scenes, "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line["samples"] for line in killed + resumed] == [line["samples"] for line in recorded(tmp_path / "straight")]
    epoch = Counter(s for line in killed + resumed if line["epoch"] == 0 for s in line["samples"])
    assert epoch == every_sample(tmp_path / "cache")


def test_two_ddp_processes_read_each_sample_once_an_epoch(tmp_path):
    """150 samples over 2 processes in batches of 32: 75 each (3 steps), every sample once an
    epoch (a DistributedSampler would have repeated some)."""
    proc = run_recorded(tmp_path, *SCENES, f"data.cache_dir={tmp_path / 'cache'}", "trainer=ddp_cpu", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [recorded(tmp_path, rank) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    expected = every_sample(tmp_path / "cache")
    for epoch in (0, 1):
        assert Counter(s for lines in ranks for line in lines if line["epoch"] == epoch for s in line["samples"]) == expected
