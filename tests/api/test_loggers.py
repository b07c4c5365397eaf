import logging

from google.protobuf.json_format import MessageToDict
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from mhc.api import compose_config, train
from mhc.data.generated import scene_tasks
from tests.api.conftest import TINY_SCENES


def test_tensorboard_csv_and_offline_wandb_without_key(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, so no wandb key
    train(make_cfg("logger=many", "logger.wandb.offline=false", "test=false", figures=True))
    events = EventAccumulator(str(next((tmp_path / "tensorboard").glob("version_*")))).Reload()
    scalars = set(events.Tags()["scalars"])
    for task in scene_tasks():
        assert f"val/{task.name}/acc" in scalars and f"val/{task.name}/f1" in scalars
    assert "val/mean/acc" in scalars
    assert any(tag.endswith("/confusion") for tag in events.Tags()["images"])
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").is_file()


def test_tensorboard_dashboard_of_a_transformer_run_has_every_panel(tmp_path):
    """Read back with TensorBoard's own reader: per-head curves, confusion matrices, task weights,
    gradient conflict, attention maps and entropy, and the resolved config."""
    cfg = compose_config("train", [
        *TINY_SCENES, "trainer.max_epochs=2", "~callbacks.progress_bar", "test=false",
        "backbone=vit_tiny", "backbone.dim=32", "backbone.depth=2", "backbone.num_heads=2", "backbone.patch_size=16",
        "logger=tensorboard", "weighting=pcgrad", "trainer.log_every_n_steps=1", "callbacks.attention_maps.time_share=1",
    ], output_dir=tmp_path)
    train(cfg)
    run = next((tmp_path / "tensorboard").glob("version_*"))
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    tasks = [task.name for task in scene_tasks()]
    for task in tasks:
        assert {f"val/{task}/acc", f"val/{task}/f1", f"val/{task}/loss", f"train/{task}/loss", f"train/weight/{task}"} <= scalars
        assert f"val/{task}/confusion" in images
    multilabel = [task.name for task in scene_tasks() if task.kind == "multilabel"]
    assert multilabel and {f"val/{task}/pr_curve" for task in multilabel} <= images  # precision-recall curves
    assert {p.stem for p in (run / "pr_curves").glob("*.png")} == set(multilabel)
    assert {"val/mean/acc", "train/conflict/mean_cosine", "train/conflict/negative_fraction", "train/conflict/shape~size"} <= scalars
    entropy = {f"attention/L{layer}H{head}/entropy" for layer in range(2) for head in range(2)}
    assert entropy <= scalars
    for tag in entropy:
        values = [event.value for event in events.Scalars(tag)]
        # one per validation epoch, and one of the best checkpoint's final validation
        assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    assert {"val/attention/sample0", "val/attention/sample1", "val/attention/rollout"} <= images
    assert len(events.Images("val/attention/rollout")) == 3
    assert (run / "attention" / "rollout.png").is_file()
    hparams = (run / "hparams.yaml").read_text()
    assert "weighting:" in hparams and "name: pcgrad" in hparams and "vit_tiny" in hparams
    # TensorBoard's HPARAMS tab, read as its plugin reads it: the resolved config beside the metric columns
    values, columns = hparams_tab(run)
    assert values["trainer/max_epochs"] == 2 and values["weighting/name"] == "pcgrad"
    assert values["backbone/depth"] == 2 and values["data/batch_size"] == cfg.data.batch_size
    assert columns == ["val/mean/f1", "val/mean/acc", "val/loss", "test/mean/f1", "test/mean/acc"]
    assert len(events.Scalars("val/mean/f1")) == 3  # its columns add no points to the curves


def hparams_tab(run) -> tuple[dict, list[str]]:
    """What TensorBoard's HPARAMS plugin finds in a run folder: the hyperparameters and the metric columns."""
    events = plugin_event_accumulator.EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {name: MessageToDict(value) for name, value in start.hparams.items()}  # a protobuf Value: its number or text
    return values, [info.name.tag for info in experiment.metric_infos]


def test_figures_keep_to_their_time_share_and_the_best_checkpoint_always_gets_them(tmp_path):
    """time_share=0: only the first validation of fit draws, and the final validation of the best
    checkpoint; the attention entropy is still logged at every validation."""
    train(compose_config("train", [
        *TINY_SCENES, "trainer.max_epochs=3", "~callbacks.progress_bar", "test=false", "logger=tensorboard",
        "callbacks.confusion_matrices.time_share=0", "callbacks.attention_maps.time_share=0",
        "backbone=vit_tiny", "backbone.dim=32", "backbone.depth=1", "backbone.num_heads=2", "backbone.patch_size=16",
    ], output_dir=tmp_path))
    events = EventAccumulator(str(next((tmp_path / "tensorboard").glob("version_*"))),
                              size_guidance={"images": 0, "scalars": 0}).Reload()
    first = scene_tasks()[0].name
    assert len(events.Images(f"val/{first}/confusion")) == 2
    assert len(events.Images("val/attention/rollout")) == 2
    assert len(events.Scalars("attention/L0H0/entropy")) == 4


def test_cnn_run_logs_no_attention(make_cfg, tmp_path):
    train(make_cfg("test=false", "logger=tensorboard", figures=True))
    events = EventAccumulator(str(next((tmp_path / "tensorboard").glob("version_*")))).Reload()
    assert not any(tag.startswith("val/attention") for tag in events.Tags()["images"])
    assert not any(tag.startswith("attention/") for tag in events.Tags()["scalars"])


def test_wandb_with_a_key_but_no_server_falls_back_offline_with_one_warning(make_cfg, tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:  # a local port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    library = logging.getLogger("mhc")  # the library warns through its logger; the commands print "warning: ..."
    library.addHandler(handler)
    try:
        train(make_cfg("logger=wandb", "logger.wandb.offline=false", "test=false"))
    finally:
        library.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING and "wandb" in r.getMessage()]
    assert warnings == [f"wandb server http://127.0.0.1:{port} is out of reach; logging offline (sync later with `wandb sync`)"]
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
