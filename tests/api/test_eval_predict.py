import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mhc
from mhc.api import evaluate, predict
from mhc.data.generated import generate_split
from mhc.errors import CheckpointError


def test_eval_prints_and_writes_per_head_metrics(make_cfg, trained_checkpoint, tmp_path):
    results = evaluate(make_cfg(f"ckpt={trained_checkpoint}", "split=val", config_name="eval"))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["split"] == "val" and written["metrics"] == results
    assert set(results) == {"shape", "size", "position", "tone", "color", "outlined", "marks"}


def test_eval_missing_checkpoint_is_clear(make_cfg, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint '.*nothing.ckpt' not found"):
        evaluate(make_cfg(f"ckpt={tmp_path}/nothing.ckpt", config_name="eval"))


def test_predict_writes_one_row_per_image_matching_load_predict(make_cfg, trained_checkpoint, tmp_path):
    images, _ = generate_split(6, seed=11, missing_fraction=0.0)
    names = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"img{i}.png")
        names.append(f"img{i}.png")
    pd.DataFrame({"image": names}).to_csv(tmp_path / "predict.csv", index=False)
    out = predict(make_cfg(f"ckpt={trained_checkpoint}", f"data.predict={tmp_path}/predict.csv",
                           f"output={tmp_path}/pred.csv", config_name="predict"))
    table = pd.read_csv(out, keep_default_na=False)
    assert table["image"].tolist() == names
    assert {"shape", "marks", "color__p_red", "outlined__p_outlined"} <= set(table.columns)
    direct = mhc.load(trained_checkpoint).predict([str(tmp_path / n) for n in names])
    assert table["shape"].tolist() == direct["shape"].labels
    p_cols = [f"shape__p_{c}" for c in direct["shape"].classes]
    assert np.allclose(table[p_cols].to_numpy(), direct["shape"].probs.numpy(), atol=1e-5)
    assert np.allclose(table[[c for c in table.columns if c.startswith("color__p_")]].sum(axis=1), 1.0, atol=1e-4)


def test_eval_and_predict_take_the_data_from_the_checkpoint(tmp_path):
    """A manifest run at 16 px: ``mhc-eval ckpt=X`` and ``mhc-predict ckpt=X data.predict=FILE``
    need nothing else; an option given replaces the checkpoint's (data.val=another file)."""
    from mhc.api import train
    from tests.cli.test_bad_input import make_folder

    folder = make_folder(tmp_path, {})
    run = train(["data=manifest", f"data.train={folder / 'train.csv'}", f"data.val={folder / 'val.csv'}",
                 "data.image_size=[16,16]", "data.batch_size=4", "backbone.widths=[8,16]", "trainer.max_epochs=1",
                 "test=false", "~callbacks.progress_bar"], output_dir=tmp_path / "run")
    ckpt = run.best_checkpoint
    given = evaluate(["split=val"], ckpt=ckpt, output_dir=tmp_path / "eval")
    spelled_out = evaluate(["split=val", "data=manifest", f"data.val={folder / 'val.csv'}", "data.image_size=[16,16]",
                            "data.batch_size=4"], ckpt=ckpt, output_dir=tmp_path / "eval2")
    assert given == spelled_out
    assert set(given) == set(run.metrics["val"]) == {"shape", "flag"}

    from mhc.errors import ConfigError  # data chosen afresh at another size: the override to give, as one shell word
    with pytest.raises(ConfigError, match=re.escape("set data.image_size=[16,16], or leave the data to the checkpoint")):
        evaluate(["split=val", "data=manifest", f"data.val={folder / 'val.csv'}"], ckpt=ckpt, output_dir=tmp_path / "eval4")

    (folder / "fewer.csv").write_text("image,shape,flag\nimg/0.png,square,yes\nimg/1.png,circle,yes\n")
    evaluate(["split=val", f"data.val={folder / 'fewer.csv'}"], ckpt=ckpt, output_dir=tmp_path / "eval3")
    report = json.loads((tmp_path / "eval3" / "metrics.json").read_text())
    assert sum(row["support"] for row in report["per_class"]["shape"]) == 2

    (folder / "new.csv").write_text("image\nimg/2.png\nimg/5.png\n")
    table = pd.read_csv(predict([f"data.predict={folder / 'new.csv'}"], ckpt=ckpt, output_dir=tmp_path / "pred"))
    assert table["image"].tolist() == ["img/2.png", "img/5.png"]
    assert table["shape"].tolist() == mhc.load(ckpt).predict([str(folder / "img/2.png"), str(folder / "img/5.png")])["shape"].labels


@pytest.mark.parametrize(("data", "message"), [
    ({"_target_": "os.system", "command": "touch hacked"}, "records the data module 'os.system', which is not one of mhc's"),
    (None, "records no data config (it was saved outside a training run, or is an export folder); choose the data, "
           "e.g. data=manifest"),
])
def test_a_checkpoints_data_config_builds_only_packaged_data_modules(trained_checkpoint, tmp_path, data, message):
    import torch

    from mhc.errors import ConfigError

    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint["mhc"]["config"]["data"] = data
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(ConfigError, match=re.escape(f"data=checkpoint: '{tmp_path / 'edited.ckpt'}' {message}")):
        evaluate([], ckpt=tmp_path / "edited.ckpt", output_dir=tmp_path / "eval")
    assert not (tmp_path / "hacked").exists()


def test_an_export_folder_records_no_data_and_asks_for_it(trained_checkpoint, tmp_path):
    from mhc.errors import ConfigError
    from mhc.export import export_checkpoint

    folder = export_checkpoint(trained_checkpoint, tmp_path / "export")
    with pytest.raises(ConfigError, match=re.escape(f"data=checkpoint: '{folder}' records no data config (it was saved "
                                                    "outside a training run, or is an export folder)")):
        evaluate([], ckpt=folder, output_dir=tmp_path / "eval")
    assert evaluate(["data=scenes", "data.num_train=96", "data.num_val=48", "data.num_test=48"], ckpt=folder,
                    output_dir=tmp_path / "eval2")  # the data given: an export folder evaluates as before
