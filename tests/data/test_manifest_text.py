"""Text manifests: a ``text`` input column, a tokenizer fitted on the training split only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mhc.config import config_dir
from mhc.data import ManifestDataModule
from mhc.data.manifest import read_manifest
from mhc.errors import ConfigError, DataError
from mhc.processing.processors import TextProcessor
from mhc.processing.tokenizer import ByteTokenizer, CharTokenizer
from tests.data.test_manifest import write

CONF = config_dir() / "data" / "manifest.yaml"

TRAIN = """\
    text,topic,urgent
    the printer is on fire,hardware,yes
    refund my order,billing,no
    "screen, keyboard and mouse",hardware,
    invoice twice,billing,yes
"""
VAL = """\
    text,topic,urgent
    zebra quiz,hardware,no
    fire,billing,yes
"""


@pytest.fixture
def train(tmp_path: Path) -> Path:
    return write(tmp_path, "train.csv", TRAIN)


def data_module(train: Path | None, **kwargs) -> ManifestDataModule:
    return ManifestDataModule(train, max_length=16, batch_size=2, **kwargs)


def test_text_is_the_input_never_a_task(train: Path) -> None:
    dm = data_module(train)
    assert read_manifest(train).input_column == "text"
    tasks = {t.name: t for t in dm.task_specs()}
    assert list(tasks) == ["topic", "urgent"] and tasks["urgent"].kind == "binary" and tasks["urgent"].masked


def test_samples_carry_padded_token_ids_from_the_training_tokenizer(train: Path) -> None:
    dm = data_module(train)
    dm.set_tasks(dm.task_specs())
    batch = next(iter(dm.train_dataloader()))
    assert "image" not in batch and batch["tokens"].dtype == torch.long and batch["tokens"].shape == (2, 16)
    dataset = dm.splits["train"]
    assert dataset.input_column == "text" and dataset.inputs[2] == "screen, keyboard and mouse"
    first, second = dataset[0], dataset[1]
    assert isinstance(dm.tokenizer, CharTokenizer)
    assert dm.tokenizer.decode(first["tokens"]) == "the printer is o"  # cut at 16 tokens
    assert dm.tokenizer.decode(second["tokens"]) == "refund my order" and second["tokens"][15].item() == 0  # padded
    assert first["targets"]["topic"].item() == 1 and second["targets"]["urgent"].item() == 0.0
    assert dataset[2]["label_mask"]["urgent"].item() is False


def test_tokenizer_is_fitted_on_the_training_split_only(train: Path, tmp_path: Path) -> None:
    dm = data_module(train, val=write(tmp_path, "val.csv", VAL))
    dm.set_tasks(dm.task_specs())
    val = dm.val_dataloader().dataset
    vocab = dm.tokenizer.vocab
    assert "z" not in vocab and "q" not in vocab  # only in the validation texts
    zebra = val.tokens[0][: len("zebra quiz")].tolist()
    assert zebra[0] == zebra[-1] == dm.tokenizer.unk_id and zebra[1] == vocab.index("e")
    assert sorted(set(vocab[3:])) == sorted(set("".join(read_manifest(train).columns["text"])))
    assert dm.processor().to_dict() == {"kind": "text", "max_length": 16, "pad_id": 0, "tokenizer": dm.tokenizer.to_dict()}


def test_checkpoint_tokenizer_is_used_and_never_refitted(train: Path, tmp_path: Path) -> None:
    saved = CharTokenizer(list("abc"))  # a tokenizer that does not fit these texts at all
    dm = data_module(train, test=write(tmp_path, "test.csv", VAL))
    dm.use_processor(TextProcessor(saved, 5))
    dm.set_tasks(dm.task_specs())
    tokens = dm.test_dataloader().dataset.tokens
    assert tokens.shape == (2, 5) and tokens[0].tolist() == [1, 1, 4, 1, 3]  # z e b r a: only b and a are known
    assert dm.tokenizer.to_dict() == saved.to_dict() and dm.processor().max_length == 5


def test_byte_tokenizer_option(train: Path) -> None:
    dm = data_module(train, tokenizer="byte")
    assert isinstance(dm.text_tokenizer(), ByteTokenizer) and dm.processor().to_dict()["tokenizer"] == {"kind": "byte"}


def test_wordpiece_tokenizer_is_trained_on_the_training_texts_and_saved_as_data(train: Path) -> None:
    from mhc.processing.tokenizer import PretrainedTokenizer, tokenizer_from_dict

    dm = data_module(train, tokenizer="wordpiece", max_size=200)
    tokenizer = dm.text_tokenizer()
    assert isinstance(tokenizer, PretrainedTokenizer) and tokenizer.vocab_size <= 200
    assert [tokenizer.fast.id_to_token(i) for i in range(3)] == ["<pad>", "<unk>", "<mask>"]
    words = tokenizer.fast.encode("The PRINTER is on Fire").tokens
    assert words == ["the", "printer", "is", "on", "fire"]  # lower-cased whole words seen in training
    assert "zebra" not in tokenizer.fast.get_vocab()  # fitted on the training split only
    tokens = dm.build_split("train")[0]["tokens"]
    assert tokens.tolist()[:5] == tokenizer.encode("the printer is on fire", 16)[0].tolist()[:5]
    rebuilt = tokenizer_from_dict(dm.processor().to_dict()["tokenizer"])
    assert rebuilt.encode(["refund my invoice"], 8).tolist() == tokenizer.encode(["refund my invoice"], 8).tolist()


def test_hydra_config_reads_a_text_manifest(train: Path) -> None:
    cfg = OmegaConf.load(CONF)
    cfg.train = str(train)
    cfg.max_size = 6
    dm = instantiate(cfg)
    assert dm.processor().max_length == 128
    assert dm.text_tokenizer().vocab[3:] == [" ", "e", "r"]  # the three most frequent characters


BAD_TEXT = {
    "both input columns": (
        {"train": "image,text,topic\na.png,hi,x\nb.png,yo,y\n"},
        ["train.csv", "both an 'image' and a 'text' column", "exactly one input column, 'image' (image paths) or 'text'"],
    ),
    "empty text": ({"train": "text,topic\nhello,x\n  ,y\n"}, ["train.csv: row 2, column 'text'", "empty text"]),
    "empty text in val": ({"val": "text,topic,urgent\nfire,hardware,yes\n,billing,no\n"}, ["val.csv: row 2, column 'text'"]),
    "image val for a text train": (
        {"val": "image,topic,urgent\nimg.png,hardware,yes\n"},
        ["val.csv: has an 'image' column, but the training manifest", "train.csv has 'text'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_TEXT))
def test_bad_text_data_is_one_line_naming_file_row_and_column(tmp_path: Path, case: str) -> None:
    files, expected = BAD_TEXT[case]
    train = write(tmp_path, "train.csv", files.get("train", TRAIN))
    val = write(tmp_path, "val.csv", files["val"]) if "val" in files else None
    with pytest.raises(DataError) as info:
        dm = data_module(train, val=val)
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_image_manifest_for_a_text_checkpoint_is_a_data_error(tmp_path: Path) -> None:
    predict = write(tmp_path, "predict.csv", "image\nimg.png\n")
    dm = data_module(None, predict=predict)
    dm.use_processor(TextProcessor(ByteTokenizer(), 8))
    with pytest.raises(DataError, match=r"predict.csv: has an 'image' column, but the checkpoint's model reads 'text'"):
        dm.setup("predict")


@pytest.mark.parametrize(
    "option, message",
    [({"tokenizer": "bpe"}, r"data.tokenizer must be one of \['char', 'byte', 'wordpiece'\], got 'bpe'"),
     ({"max_length": 0}, "data.max_length must be at least 1, got 0")],
)
def test_bad_text_options_are_config_errors(train: Path, option: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ManifestDataModule(train, **option)
