"""``callbacks=ema``: validation and the saved checkpoint hold the exponential moving average of
the weights, computed here again from the weights recorded after every optimizer step."""

from __future__ import annotations

from pathlib import Path

import torch

from mhc.api import compose_config, train


class StepRecorder:
    """A callback saving the network's parameters after every training batch (via +callbacks)."""

    def __new__(cls, folder: str):
        import pytorch_lightning as pl

        class _Recorder(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                state = {k: v.detach().clone() for k, v in module.net.named_parameters()}
                torch.save(state, Path(folder) / f"step{trainer.global_step:03d}.pt")

        return _Recorder()


def test_checkpoint_holds_the_moving_average_of_the_weights(tmp_path):
    decay = 0.6
    cfg = compose_config("train", ["data.num_train=96", "data.num_val=32", "data.num_test=32", "data.batch_size=32",
                                   "backbone.widths=[8,16]", "trainer.max_epochs=1", "~callbacks.progress_bar", "test=false",
                                   "callbacks=ema", f"callbacks.ema.decay={decay}",
                                   "+callbacks.recorder._target_=tests.training.test_ema.StepRecorder",
                                   f"+callbacks.recorder.folder={tmp_path}"], output_dir=tmp_path / "run")
    result = train(cfg)
    steps = [torch.load(p) for p in sorted(tmp_path.glob("step*.pt"))]
    assert len(steps) == 3
    average = steps[0]  # the first update copies the weights, then each moves (1 - decay) towards them
    for weights in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * weights[k] for k in average}
    saved = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    for name, value in average.items():
        torch.testing.assert_close(saved[f"net.{name}"], value, rtol=1e-5, atol=1e-6)
    head = next(k for k in steps[-1] if k.startswith("heads."))
    assert not torch.allclose(saved[f"net.{head}"], steps[-1][head])  # not the last raw weights
