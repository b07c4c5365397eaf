"""Multi-source data: one source per batch, the sampling policies, and a real training run."""

from collections import Counter

import pytest
import torch

from mhc.data import MultiSourceDataModule, ScenesDataModule
from mhc.data.multisource import SourceBatchSampler, source_probabilities
from mhc.errors import ConfigError

GEOMETRY, APPEARANCE = ["shape", "size", "position"], ["tone", "color", "outlined", "marks"]


def make(sampling="proportional", sizes=(120, 40), **kwargs):
    def scenes(n, seed):
        return ScenesDataModule(num_train=n, num_val=24, num_test=24, missing_fraction=0.0, seed=seed)

    return MultiSourceDataModule(
        {"geometry": {"data": scenes(sizes[0], 0), "tasks": GEOMETRY}, "appearance": {"data": scenes(sizes[1], 5), "tasks": APPEARANCE}},
        sampling=sampling, batch_size=16, **kwargs)


def test_tasks_are_the_union_and_each_batch_comes_from_one_source():
    data = make()
    data.set_tasks(data.task_specs())
    assert [t.name for t in data.tasks] == GEOMETRY + APPEARANCE
    seen = Counter()
    for batch in data.loader("train", shuffle=True):
        labelled = {name for name, mask in batch["label_mask"].items() if mask.all()}
        unlabelled = {name for name, mask in batch["label_mask"].items() if not mask.any()}
        assert labelled | unlabelled == set(GEOMETRY + APPEARANCE)  # never a mixed batch
        assert labelled in (set(GEOMETRY), set(APPEARANCE))
        seen[frozenset(labelled)] += 1
    assert sum(seen.values()) == 120 // 16 + 1 + 40 // 16 + 1  # an epoch: the batches of both sources
    assert len(seen) == 2


def test_evaluation_walks_every_sample_once():
    data = make()
    data.set_tasks(data.task_specs())
    batches = list(data.loader("val"))
    assert sum(len(b["image"]) for b in batches) == 48
    assert all(b["label_mask"]["shape"].all() != b["label_mask"]["tone"].all() for b in batches)


@pytest.mark.parametrize("sampling, expected", [
    ("proportional", [0.75, 0.25]),
    ("temperature", [0.75 ** 0.5 / (0.75 ** 0.5 + 0.25 ** 0.5), 0.25 ** 0.5 / (0.75 ** 0.5 + 0.25 ** 0.5)]),
])
def test_sampling_frequencies_follow_the_policy(sampling, expected):
    torch.testing.assert_close(source_probabilities([3000, 1000], sampling, temperature=2.0),
                               torch.tensor(expected, dtype=torch.float64))
    sampler = SourceBatchSampler([3000, 1000], batch_size=10, sampling=sampling, temperature=2.0)
    counts = Counter(batch[0] >= 3000 for epoch in range(5) for batch in (sampler.set_epoch(epoch), list(sampler))[1])
    share = counts[False] / sum(counts.values())
    assert share == pytest.approx(expected[0], abs=0.03)


def test_round_robin_alternates_and_order_is_seeded():
    sampler = SourceBatchSampler([50, 50, 50], batch_size=10, sampling="round_robin")
    sources = [batch[0] // 50 for batch in sampler]
    assert sources == [0, 1, 2] * 5
    again = SourceBatchSampler([50, 50, 50], batch_size=10, sampling="round_robin")
    assert list(again) == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != list(again)


def test_a_small_source_starts_over_when_it_runs_out():
    sampler = SourceBatchSampler([100, 10], batch_size=10, sampling="round_robin")
    small = [batch for batch in sampler if batch[0] >= 100]  # 11 batches in turn: 5 from the small one
    assert len(small) == 5 and all(sorted(b) == list(range(100, 110)) for b in small)


def test_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match=r"data.sampling must be one of \['round_robin', 'proportional', 'temperature'\]"):
        make(sampling="zigzag")
    with pytest.raises(ConfigError, match=r"task 'shape' comes from sources 'a' and 'b'"):
        MultiSourceDataModule({"a": ScenesDataModule(), "b": ScenesDataModule()}).task_specs()
    with pytest.raises(ConfigError, match=r"data.sources.a.tasks: \['nope'\] not provided"):
        MultiSourceDataModule({"a": {"data": ScenesDataModule(), "tasks": ["nope"]}}).task_specs()


def test_multisource_config_trains_end_to_end(tmp_path):
    from mhc.api import compose_config, train
    from tests.api.conftest import TINY

    small = ["data.sources.geometry.data.num_train=64", "data.sources.appearance.data.num_train=32",
             *[f"data.sources.{s}.data.num_{split}=16" for s in ("geometry", "appearance") for split in ("val", "test")],
             "data.batch_size=16", "weighting=pcgrad"]
    cfg = compose_config("train", ["data=multisource", "test=false", *small, *TINY], output_dir=tmp_path)
    metrics = train(cfg).metrics["val"]
    assert set(GEOMETRY + APPEARANCE) <= set(metrics) and all("acc" in metrics[t] for t in GEOMETRY + APPEARANCE)
