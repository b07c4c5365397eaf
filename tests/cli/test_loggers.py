from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mhc.cli.train import train
from mhc.data.generated import scene_tasks


def test_tensorboard_csv_and_offline_wandb_without_key(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, so no wandb key
    train(make_cfg("logger=many", "logger.wandb.offline=false", "test=false"))
    events = EventAccumulator(str(next((tmp_path / "tensorboard").glob("version_*")))).Reload()
    scalars = set(events.Tags()["scalars"])
    for task in scene_tasks():
        assert f"val/{task.name}/acc" in scalars and f"val/{task.name}/f1" in scalars
    assert "val/mean/acc" in scalars
    assert any(tag.endswith("/confusion") for tag in events.Tags()["images"])
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").is_file()
