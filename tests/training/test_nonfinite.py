"""A NaN or infinite loss stops the run with a message naming the task and step, or skips the batch."""

import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mhc.errors import NonFiniteLossError
from mhc.processing.processors import ImageProcessor
from mhc.training import MultiHeadModule
from mhc.training.guards import NonFiniteLoss
from tests.api.conftest import TINY, TINY_SCENES
from tests.training.test_balancing import make_batch


def fit(tasks, tmp_path, weighting="static", callbacks=(), poison=True, max_epochs=1):
    config = {"backbone": {"name": "cnn", "widths": [8, 16]}, "tasks": [t.to_dict() for t in tasks], "processor": ImageProcessor().to_dict()}
    module = MultiHeadModule(config, weighting={"name": weighting})
    batches = [make_batch(tasks, n=4) for _ in range(4)]
    if poison:
        batches[2]["image"][0, 0, 0, 0] = float("nan")  # one poisoned sample in the third batch
    trainer = pl.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
                         callbacks=list(callbacks))
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return module, trainer


@pytest.mark.parametrize("weighting", ["static", "pcgrad"])
@pytest.mark.parametrize("callbacks", [(), (NonFiniteLoss("stop"),)], ids=["module", "callback"])
def test_nonfinite_loss_stops_naming_task_and_step(tasks, tmp_path, weighting, callbacks):
    with pytest.raises(NonFiniteLossError, match=r"training stopped: the loss of task 'coarse' is nan at step 2 \(epoch 0\)"):
        fit(tasks, tmp_path, weighting, callbacks)


@pytest.mark.parametrize("weighting", ["static", "pcgrad", "gradnorm"])
def test_nonfinite_loss_skip_leaves_weights_and_method_state_finite(tasks, tmp_path, weighting):
    module, trainer = fit(tasks, tmp_path, weighting, [NonFiniteLoss("skip")])
    assert module.skipped_steps == 1
    assert trainer.global_step == (4 if module.automatic_optimization else 3)  # Lightning counts the empty step
    assert all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())


class PoisonBuffer(pl.Callback):
    """Makes a batch-norm statistic infinite after the step ``at``, the loss staying finite."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            next(b for name, b in pl_module.net.named_buffers() if name.endswith("running_var")).fill_(float("inf"))


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_diverged_buffer_stops_the_run_at_the_next_logged_step_naming_it(tasks, tmp_path, policy):
    config = {"backbone": {"name": "cnn", "widths": [8, 16]}, "tasks": [t.to_dict() for t in tasks], "processor": ImageProcessor().to_dict()}
    module = MultiHeadModule(config)
    batches = [make_batch(tasks, n=4) for _ in range(6)]
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0, log_every_n_steps=2,
                         callbacks=[PoisonBuffer(at=3), NonFiniteLoss(policy)])  # poisoned after step 3, checked at 4
    message = (r"training stopped: the buffer 'net\.backbone\..*running_var' is not finite \(NaN or infinite\) at step 4 "
               r"\(epoch 0\); the run diverged; no checkpoint was written \(a smaller optimizer\.lr or "
               r"trainer\.gradient_clip_val may help\)$")
    with pytest.raises(NonFiniteLossError, match=message):
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))


def test_cli_a_diverging_run_stops_in_one_line_and_writes_no_checkpoint_of_its_diverged_state(tmp_path):
    overrides = [o for o in [*TINY_SCENES, *TINY] if not o.startswith("~")] + ["callbacks.progress_bar=null", "test=false",
                                                                              f"hydra.run.dir={tmp_path}"]
    bad = subprocess.run([sys.executable, "-m", "mhc.cli.train", *overrides, "optimizer.lr=1e6", "trainer.max_epochs=2"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert errors[0].startswith("error: training stopped: the ") and " is not finite " in errors[0]
    assert errors[0].endswith("the run diverged; no checkpoint was written (a smaller optimizer.lr or "
                              "trainer.gradient_clip_val may help)")
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))  # the only state it reached was diverged


def bad_start_after(losses: dict[str, float], priors: dict[str, float]) -> list[str]:
    """The warnings :class:`BadStart` gives after a first validation with these per-head losses."""
    import warnings
    from types import SimpleNamespace

    from mhc.training.guards import BadStart

    guard = BadStart()
    guard.priors = priors
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    trainer = SimpleNamespace(sanity_checking=False, optimizers=[optimizer])
    module = SimpleNamespace(last_results={"val": {task: {"loss": v} for task, v in losses.items()}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guard.on_validation_end(trainer, module)
        guard.on_validation_end(trainer, module)  # the first validation only
    return [str(w.message) for w in caught]


def test_a_first_validation_far_above_the_base_rates_names_the_learning_rate():
    messages = bad_start_after({"shape": 282.5, "size": 0.9}, {"shape": 1.38, "size": 1.09})
    assert len(messages) == 1
    assert "shape 282 (the training base rates give 1.38)" in messages[0] and "size" not in messages[0]
    assert "optimizer.lr=0.5" in messages[0]


def test_a_first_validation_near_the_base_rates_says_nothing():
    assert bad_start_after({"shape": 1.6, "size": 1.2}, {"shape": 1.38, "size": 1.09}) == []


def test_a_short_run_logs_every_epoch_and_names_the_epochs_that_give_enough_steps(tasks, tmp_path):
    import warnings

    from mhc.training.console import quiet_dependencies
    from mhc.training.guards import ShortRun

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_dependencies()  # as build_trainer does: Lightning's own warning about the interval is replaced
        module, trainer = fit(tasks, tmp_path, callbacks=[ShortRun(min_steps=500, advised_steps=2000)], poison=False,
                              max_epochs=2)
    messages = [str(w.message) for w in caught]
    assert trainer.log_every_n_steps == 4  # 4 batches an epoch: the default interval of 50 never logged
    assert not any("smaller than the logging interval" in m for m in messages)
    assert ("this run takes 8 optimizer steps (2 epochs of 4), few to train a network from scratch: "
            "trainer.max_epochs=500 gives 2,000") in " ".join(messages)


def test_a_pretrained_backbone_or_a_long_run_is_not_short():
    from types import SimpleNamespace

    from mhc.training.guards import from_scratch

    assert from_scratch(SimpleNamespace(net=SimpleNamespace(backbone_config={"name": "cnn"})))
    assert not from_scratch(SimpleNamespace(net=SimpleNamespace(backbone_config={"name": "resnet18", "weights": "DEFAULT"})))
    assert not from_scratch(SimpleNamespace(net=SimpleNamespace(backbone_config={"name": "timm", "pretrained": True})))
