import pytest
import torch

from mhc.errors import ConfigError
from mhc.model import MultiHeadNet
from mhc.model.heads import fused_head_logits
from mhc.tasks import TaskSpec
from mhc.training.speed import apply_speed_options, has_convolutional_backbone

CNN = {"name": "cnn", "widths": [8, 16], "stem_stride": 2}
VIT = {"name": "vit_tiny", "image_size": 32, "patch_size": 8, "dim": 16, "depth": 1, "num_heads": 2}
SEQ = {"name": "seq_tiny", "dim": 16, "depth": 1, "num_heads": 2, "vocab_size": 11, "max_length": 8}
TASKS = [
    TaskSpec("shape", "multiclass", ["a", "b", "c"]),
    TaskSpec("flag", "binary", ["no", "yes"]),
    TaskSpec("tags", "multilabel", ["x", "y", "z", "w"]),
    TaskSpec("deep", "multiclass", ["p", "q"], hidden=[8]),  # two layers: never fused
    TaskSpec("noisy", "binary", ["no", "yes"], dropout=0.5),  # dropout: fused in eval mode only
]


def grads_of(net: MultiHeadNet, features: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    net.zero_grad()
    features = features.clone().requires_grad_(True)
    torch.manual_seed(0)  # the same dropout masks on both sides
    logits = net.forward_heads(features)
    sum((out * torch.arange(out.numel()).view_as(out)).sum() for out in logits.values()).backward()
    return {k: v.detach() for k, v in logits.items()}, [features.grad, *(p.grad for p in net.heads.parameters())]


@pytest.mark.parametrize("training", [True, False])
def test_fused_heads_equal_heads_one_by_one_in_value_and_gradient(training):
    torch.manual_seed(0)
    net = MultiHeadNet(CNN, TASKS).train(training)
    features = torch.randn(6, net.backbone.num_features)
    net.fuse_heads = True
    fused, fused_grads = grads_of(net, features)
    net.fuse_heads = False
    separate, separate_grads = grads_of(net, features)
    assert list(fused) == [t.name for t in TASKS]
    for name in fused:
        torch.testing.assert_close(fused[name], separate[name])
    for a, b in zip(fused_grads, separate_grads):
        torch.testing.assert_close(a, b)


def test_which_heads_fuse():
    net = MultiHeadNet(CNN, TASKS)
    features = torch.randn(2, net.backbone.num_features)
    net.train()
    logits = fused_head_logits(net.heads, features, training=True)
    fused = logits["shape"]._base  # views of one matmul's output
    assert fused is not None and logits["flag"]._base is fused and logits["tags"]._base is fused
    assert logits["deep"]._base is None and logits["noisy"]._base is None  # run on their own
    logits = fused_head_logits(net.heads, features, training=False)
    assert logits["noisy"]._base is not None and logits["noisy"]._base is logits["shape"]._base  # no dropout at evaluation


def test_channels_last_auto_is_for_convolutional_backbones_and_changes_nothing_but_speed():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    cnn = MultiHeadNet(CNN, TASKS[:3]).eval()
    expected = cnn(images)
    apply_speed_options(cnn)
    assert cnn.channels_last and has_convolutional_backbone(cnn)
    assert cnn.backbone_input(images).is_contiguous(memory_format=torch.channels_last)
    conv = next(m for m in cnn.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for name, out in cnn(images).items():
        torch.testing.assert_close(out, expected[name], atol=1e-5, rtol=1e-4)
    assert set(cnn.state_dict()) == set(MultiHeadNet(CNN, TASKS[:3]).state_dict())
    vit = MultiHeadNet(VIT, TASKS[:3])
    apply_speed_options(vit)
    assert not vit.channels_last and not has_convolutional_backbone(vit)


@pytest.mark.parametrize("options, message", [
    ({"channels_last": "yes"}, "perf.channels_last must be true, false or auto, got 'yes'"),
    ({"compile": "fastest"}, "perf.compile must be true, false or one of .*got 'fastest'"),
])
def test_bad_speed_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        apply_speed_options(MultiHeadNet(CNN, TASKS[:1]), **options)


def test_channels_last_on_a_token_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="perf.channels_last applies to image backbones; this one reads token ids"):
        apply_speed_options(MultiHeadNet(SEQ, TASKS[:1]), channels_last=True)


def test_compiled_backbone_keeps_its_parameter_names_and_outputs():
    torch.manual_seed(0)
    net = MultiHeadNet(CNN, TASKS[:2]).eval()
    images = torch.rand(2, 3, 32, 32)
    expected, keys = net(images), set(net.state_dict())
    apply_speed_options(net, channels_last=False, compile=True)
    out = net(images)
    assert set(net.state_dict()) == keys  # checkpoints load anywhere
    for name in out:
        torch.testing.assert_close(out[name], expected[name], atol=1e-5, rtol=1e-4)


@pytest.fixture
def threads_restored():
    """torch's thread count and OMP_NUM_THREADS as they were, after the test."""
    import os

    before, omp = torch.get_num_threads(), os.environ.pop("OMP_NUM_THREADS", None)
    yield
    torch.set_num_threads(before)
    os.environ.pop("OMP_NUM_THREADS", None)
    if omp is not None:
        os.environ["OMP_NUM_THREADS"] = omp


def test_threads_auto_is_the_cpus_this_process_may_use(threads_restored, monkeypatch, tmp_path):
    from mhc.training import speed

    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # a container's quota of 1.5 CPUs
    monkeypatch.setattr(speed, "CGROUP_CPU_MAX", cpu_max)
    monkeypatch.setattr(speed.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert speed.cpu_budget() == 2 and speed.use_threads("auto") == 2 and torch.get_num_threads() == 2
    cpu_max.write_text("max 100000\n")
    assert speed.cpu_budget() == 4


def test_threads_given_are_set_and_kept_for_ddp_processes(threads_restored):
    import os

    from mhc.training.speed import use_threads

    assert use_threads(1) == 1 and torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    torch.set_num_threads(2)
    assert use_threads("auto") == 2  # OMP_NUM_THREADS set: auto leaves torch as it is


def test_threads_must_be_auto_or_a_positive_integer(threads_restored):
    from mhc.errors import ConfigError
    from mhc.training.speed import use_threads

    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ConfigError, match="^perf.threads must be auto or an integer >= 1, got "):
            use_threads(bad)
