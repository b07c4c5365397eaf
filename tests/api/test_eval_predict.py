import json

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
