"""The analysis of a vision transformer, and the report written from it."""

import pytest
import torch

from mhc.analysis import analyze, write_report
from mhc.errors import ConfigError
from mhc.model import MultiHeadNet
from mhc.tasks import TaskSpec

TASKS = [TaskSpec("shape", "multiclass", ["a", "b", "c"]), TaskSpec("flag", "binary", ["no", "yes"], masked=True)]


def image_batches(n: int = 2, size: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(size, 3, 32, 32, generator=g),
            "targets": {"shape": torch.randint(0, 3, (size,), generator=g), "flag": torch.randint(0, 2, (size,), generator=g).float()},
            "label_mask": {"shape": torch.ones(size, dtype=torch.bool), "flag": torch.arange(size) % 2 == 0},
        }
        for _ in range(n)
    ]


def test_vision_transformer_analysis_and_report(tmp_path):
    torch.manual_seed(0)
    net = MultiHeadNet({"name": "vit_tiny", "image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "num_heads": 4}, TASKS)
    analysis = analyze(net, image_batches(), samples=2, fractions=[0.0, 0.5], random_seeds=2)
    assert analysis.num_samples == 12
    assert analysis.samples[0]["labels"][:3] == ["CLS", "0,0", "0,1"] and len(analysis.samples[0]["labels"]) == 17
    assert analysis.samples[0]["rollout"].shape == (17, 17) and "image" in analysis.samples[0]
    assert set(analysis.importance) == {"shape", "flag"}
    assert analysis.redundancy.shape == (8, 8)
    assert torch.allclose(analysis.redundancy.diagonal(), torch.ones(8), atol=1e-5)
    half = [p for p in analysis.curve if p.fraction == 0.5]
    assert len(half) == 3 and all(p.heads_pruned == 4 for p in half)

    report = write_report(analysis, tmp_path, "ViT")
    text = report.read_text()
    assert text.startswith("# ViT") and "12 samples; 8 heads in 2 layers." in text
    assert (tmp_path / "figures" / "rollout.png").stat().st_size > 1000
    assert (tmp_path / "analysis.json").is_file()


def test_chosen_samples_are_drawn_and_bad_indices_are_clear():
    torch.manual_seed(0)
    net = MultiHeadNet({"name": "vit_tiny", "image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "num_heads": 2}, TASKS)
    batches = image_batches()
    analysis = analyze(net, batches, samples=[7, 1], fractions=[])
    assert torch.equal(analysis.samples[0]["image"], batches[1]["image"][1])
    assert torch.equal(analysis.samples[1]["image"], batches[0]["image"][1])
    with pytest.raises(ConfigError, match=r"samples: indices \[12\] are outside the 12 samples"):
        analyze(net, batches, samples=[12], fractions=[])


def test_analysis_of_a_pruned_model_marks_pruned_heads(tmp_path):
    torch.manual_seed(0)
    net = MultiHeadNet({"name": "vit_tiny", "image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "num_heads": 4}, TASKS)
    net.prune_heads([[1], [0, 3]])
    analysis = analyze(net, image_batches(1), samples=1, fractions=[])
    assert analysis.labels[0][1] == "pruned" and analysis.labels[1][0] == analysis.labels[1][3] == "pruned"
    assert torch.isnan(analysis.importance["shape"][1, [0, 3]]).all()
    assert analysis.redundancy.shape == (5, 5) and not analysis.curve
    assert "pruning curve" not in write_report(analysis, tmp_path).read_text().lower()
