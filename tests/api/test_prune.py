"""``mhc-prune``: the pruned checkpoint, its comparison with the original, and errors."""

import json

import pytest
import torch

import mhc
from mhc.api import evaluate, prune
from mhc.errors import ConfigError


def test_prune_writes_a_smaller_checkpoint_that_loads_and_evaluates(make_cfg, sequence_checkpoint, tmp_path):
    cfg = make_cfg(f"ckpt={sequence_checkpoint}", "data=sequences", "fraction=0.5", "max_batches=2", "repeats=3",
                   config_name="prune")
    output = prune(cfg)["pruned_checkpoint"]
    report = json.loads((tmp_path / "prune.json").read_text())
    assert sum(map(len, report["pruned_heads"])) == 4 and all(len(h) < 4 for h in report["pruned_heads"])
    original, pruned = report["original"], report["pruned"]
    assert pruned["heads"] == 4 and original["heads"] == 8
    assert pruned["parameters"] < original["parameters"] and pruned["weight bytes"] < original["weight bytes"]
    assert pruned["latency ms"] > 0 and 0.0 <= pruned["first acc"] <= 1.0

    net = mhc.load(output)
    assert [len(b.attn.kept_heads) for b in net.backbone.encoder.blocks] == [4 - len(h) for h in report["pruned_heads"]]
    assert sum(p.numel() for p in net.parameters()) == pruned["parameters"]
    metrics = evaluate(make_cfg(f"ckpt={output}", "data=sequences", "split=val", config_name="eval"))
    assert metrics["first"]["acc"] == pytest.approx(pruned["first acc"], abs=1e-6)


def test_random_pruning_is_seeded(make_cfg, sequence_checkpoint):
    heads = []
    for _ in range(2):
        output = prune(make_cfg(f"ckpt={sequence_checkpoint}", "data=sequences", "strategy=random", "seed=5",
                                "repeats=1", config_name="prune"))["pruned_checkpoint"]
        heads.append(mhc.load(output).backbone_config["pruned_heads"])
    assert heads[0] == heads[1] and sum(map(len, heads[0])) == round(0.3 * 8)


@pytest.mark.parametrize(("override", "message"), [("strategy=largest", "strategy: expected one of"),
                                                   ("fraction=1.0", "fraction: expected a fraction")])
def test_prune_option_errors(make_cfg, sequence_checkpoint, override, message):
    with pytest.raises(ConfigError, match=message):
        prune(make_cfg(f"ckpt={sequence_checkpoint}", "data=sequences", override, config_name="prune"))


def test_pruning_leaves_the_original_checkpoint_untouched(make_cfg, sequence_checkpoint):
    before = torch.load(sequence_checkpoint, weights_only=True)["state_dict"]
    prune(make_cfg(f"ckpt={sequence_checkpoint}", "data=sequences", "repeats=1", config_name="prune"))
    after = torch.load(sequence_checkpoint, weights_only=True)["state_dict"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
