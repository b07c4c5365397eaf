"""Text manifests end to end: train a token model, then load, evaluate and predict with its saved tokenizer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mhc
import mhc.data.manifest
from mhc.api import compose_config, evaluate, predict, train
from mhc.api.build import build_datamodule, build_module
from mhc.errors import ConfigError
from mhc.processing.tokenizer import CharTokenizer

PHRASES = {
    "hardware": ["the printer is on fire", "my screen went dark", "keyboard keys stick"],
    "billing": ["refund my order", "invoice sent twice", "card was charged"],
}
TEXT_DATA = ["data=manifest", "data.max_length=24", "data.batch_size=16"]
TINY_TEXT = [*TEXT_DATA, "backbone=seq_tiny", "backbone.dim=16", "backbone.depth=1", "trainer.max_epochs=1",
             "~callbacks.progress_bar"]


def text_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    topics = [("hardware", "billing")[i % 2] for i in range(n)]
    texts = [f"{PHRASES[t][rng.integers(3)]} {'now' if rng.random() < 0.5 else 'please'}" for t in topics]
    return pd.DataFrame({"text": texts, "topic": topics, "urgent": ["yes" if "now" in t else "no" for t in texts]})


def text_cfg(output_dir, *overrides: str, config_name: str = "train"):
    tiny = TINY_TEXT if config_name == "train" else TEXT_DATA  # the options each command has
    return compose_config(config_name, [*tiny, *overrides], output_dir=output_dir)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A token model trained for one epoch on a tiny text manifest; val holds characters train lacks."""
    folder = tmp_path_factory.mktemp("text")
    text_rows(36, seed=0).to_csv(folder / "train.csv", index=False)
    val = text_rows(12, seed=1)
    val.loc[0, "text"] = "zebra quiz jam"  # z, q and j appear only here
    val.to_csv(folder / "val.csv", index=False)
    text_rows(12, seed=2).to_csv(folder / "test.csv", index=False)
    train(text_cfg(folder / "run", f"data.train={folder}/train.csv", f"data.val={folder}/val.csv", "test=false"))
    return folder, folder / "run" / "checkpoints" / "last.ckpt"


def test_checkpoint_carries_the_training_tokenizer_and_reads_strings(text_run):
    folder, ckpt = text_run
    model = mhc.load(ckpt)
    train_texts = pd.read_csv(folder / "train.csv")["text"].tolist()
    assert model.tokenizer.to_dict() == CharTokenizer.fit(train_texts).to_dict()  # the train split only
    assert not {"z", "q", "j"} & set(model.tokenizer.vocab)
    assert model.backbone_config["vocab_size"] == len(model.tokenizer) and model.backbone_config["max_length"] == 24
    out = model.predict(["the printer is on fire now", "refund my order please"])
    assert len(out["topic"].labels) == 2 and set(out["topic"].labels) <= {"billing", "hardware"}
    assert out["urgent"].probs.shape == (2, 2) and np.allclose(out["topic"].probs.sum(-1).numpy(), 1.0)


def test_eval_encodes_with_the_saved_tokenizer(text_run, tmp_path, monkeypatch):
    folder, ckpt = text_run
    other = pd.DataFrame({"text": ["ZZZ YYY", "XXX"], "topic": ["billing", "hardware"], "urgent": ["no", "yes"]})
    other.to_csv(tmp_path / "other_train.csv", index=False)  # a training file the tokenizer must not come from

    def refit(*args, **kwargs):
        raise AssertionError("the tokenizer was refitted on evaluation data")

    monkeypatch.setattr(mhc.data.manifest, "fit_tokenizer", refit)
    results = evaluate(text_cfg(tmp_path, f"ckpt={ckpt}", f"data.train={tmp_path}/other_train.csv",
                                f"data.test={folder}/test.csv", config_name="eval"))
    test = pd.read_csv(folder / "test.csv")
    direct = mhc.load(ckpt).predict(test["text"].tolist())
    assert results["topic"]["acc"] == pytest.approx(np.mean(np.array(direct["topic"].labels) == test["topic"]), abs=1e-6)


def test_text_checkpoint_on_image_data_is_one_config_error(text_run, tmp_path):
    _, ckpt = text_run
    cfg = compose_config("eval", [f"ckpt={ckpt}", "data=scenes"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="the checkpoint's model reads text but this data gives images"):
        evaluate(cfg)


def test_predict_writes_a_text_column(text_run, tmp_path):
    _, ckpt = text_run
    texts = ["card was charged now", "my screen went dark", "jazz"]
    pd.DataFrame({"id": [3, 1, 2], "text": texts}).to_csv(tmp_path / "texts.csv", index=False)
    out = predict(text_cfg(tmp_path, f"ckpt={ckpt}", f"data.predict={tmp_path}/texts.csv", f"output={tmp_path}/p.csv",
                           config_name="predict"))
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns[:2]) == ["text", "topic"] and "image" not in table.columns
    assert table["text"].tolist() == texts
    direct = mhc.load(ckpt).predict(texts)
    assert table["topic"].tolist() == direct["topic"].labels
    p_cols = [f"topic__p_{c}" for c in direct["topic"].classes]
    assert np.allclose(table[p_cols].to_numpy(), direct["topic"].probs.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=manifest", "data.train={train}", "backbone=cnn"],
         "backbone=cnn reads images but data=manifest gives token ids; choose a backbone that reads token ids "
         "(bag, seq_small, seq_tiny, textcnn)"),
        (["backbone=seq_tiny", "data=scenes"],
         "backbone=seq_tiny reads token ids but data=scenes gives images; choose a backbone that reads images (airbench, cnn, "),
    ],
)
def test_backbone_reading_the_other_input_is_one_config_error(text_run, tmp_path, overrides, message):
    train_csv = text_run[0] / "train.csv"
    cfg = compose_config("train", [o.format(train=train_csv) for o in overrides], output_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        build_module(cfg, build_datamodule(cfg))
    assert message in str(info.value) and "\n" not in str(info.value)
