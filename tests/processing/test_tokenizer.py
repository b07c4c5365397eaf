"""Built-in tokenizers: ids, padding and truncation, round trips, and their saved form."""

from __future__ import annotations

import json

import pytest
import torch

from mhc.errors import CheckpointError, ConfigError, DataError
from mhc.processing.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    WordTokenizer,
    fit_tokenizer,
    tokenizer_from_dict,
)


def test_char_vocabulary_is_reserved_ids_then_training_characters_in_code_point_order():
    tokenizer = CharTokenizer.fit(["banana", "cab"])
    assert tokenizer.vocab == ["<pad>", "<unk>", "<mask>", "a", "b", "c", "n"]
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.mask_id) == (0, 1, 2)
    assert len(tokenizer) == tokenizer.vocab_size == 7
    assert CharTokenizer.fit(["cab", "banana"]).vocab == tokenizer.vocab  # order of texts does not matter


def test_char_encode_pads_truncates_and_maps_unseen_characters_to_unk():
    tokenizer = CharTokenizer.fit(["abc"])
    ids = tokenizer.encode(["cab", "a", "abcabc", "axb"], max_length=4)
    assert ids.dtype == torch.long and ids.shape == (4, 4)
    assert ids.tolist() == [[5, 3, 4, 0], [3, 0, 0, 0], [3, 4, 5, 3], [3, 1, 4, 0]]
    assert tokenizer.encode("ba", max_length=3).tolist() == [[4, 3, 0]]  # one text: a batch of one


def test_char_decode_round_trips_and_names_reserved_ids():
    tokenizer = CharTokenizer.fit(["hello world"])
    texts = ["hello", "world", "low"]
    assert tokenizer.decode(tokenizer.encode(texts, max_length=8)) == texts
    assert tokenizer.decode([tokenizer.index["h"], 1, 2, 0, 0]) == "h<unk><mask>"


def test_char_min_count_and_max_size_keep_the_most_frequent():
    texts = ["aaaab", "bbc", "cd"]  # a: 4, b: 3, c: 2, d: 1
    assert CharTokenizer.fit(texts, min_count=2).vocab[3:] == ["a", "b", "c"]
    assert CharTokenizer.fit(texts, max_size=5).vocab[3:] == ["a", "b"]  # 3 reserved + 2 characters
    assert CharTokenizer.fit(["ba", "ab"], max_size=4).vocab[3:] == ["a"]  # a tie goes to the lower code point
    with pytest.raises(ConfigError, match="max_size must exceed the 3 reserved ids, got 3"):
        CharTokenizer.fit(texts, max_size=3)
    with pytest.raises(ConfigError, match="min_count must be at least 1, got 0"):
        CharTokenizer.fit(texts, min_count=0)


def test_byte_tokenizer_is_fixed_and_round_trips_any_text():
    tokenizer = ByteTokenizer()
    assert len(tokenizer) == 259
    texts = ["héllo ✓", "x"]
    ids = tokenizer.encode(texts, max_length=12)
    assert ids[1].tolist() == [ord("x") + 3] + [0] * 11
    assert tokenizer.decode(ids) == texts
    assert tokenizer.decode(tokenizer.encode("é", max_length=1)[0]) == "\ufffd"  # a character cut in half


def test_word_tokenizer_has_a_fixed_vocabulary():
    tokenizer = WordTokenizer(["<pad>", "|", "a", "b"])
    assert tokenizer.encode("a | b", max_length=4).tolist() == [[2, 1, 3, 0]]
    assert tokenizer.decode([2, 1, 3, 0]) == "a | b"
    assert tokenizer.unk_id is None and tokenizer.mask_id is None
    with pytest.raises(DataError, match=r"unknown token 'c' in 'a c'; the vocabulary is \['\|', 'a', 'b'\]"):
        tokenizer.encode("a c", max_length=4)


@pytest.mark.parametrize("text, message", [("", "text 1 is empty"), (3, "text 1: expected a string, got int")])
def test_empty_or_non_string_text_is_a_data_error(text, message):
    with pytest.raises(DataError, match=message):
        CharTokenizer.fit(["ab"]).encode(["ab", text], max_length=4)


@pytest.mark.parametrize(
    "tokenizer", [CharTokenizer.fit(["some text!"]), ByteTokenizer(), WordTokenizer(["<pad>", "x", "<unk>"])]
)
def test_to_dict_is_json_and_rebuilds_the_same_tokenizer(tokenizer):
    description = json.loads(json.dumps(tokenizer.to_dict()))
    rebuilt = tokenizer_from_dict(description)
    assert type(rebuilt) is type(tokenizer) and rebuilt.to_dict() == tokenizer.to_dict()
    texts = ["x some", "text! y"]
    assert torch.equal(rebuilt.encode(texts, max_length=9), tokenizer.encode(texts, max_length=9))


@pytest.mark.parametrize(
    "description, message",
    [
        ("char", "expected a mapping, got a str"),
        ({"kind": "bpe"}, "unknown kind 'bpe'"),
        ({"kind": "char"}, "'vocab' must be a list of strings"),
        ({"kind": "char", "vocab": ["<pad>", "<unk>", "<mask>", "ab"]}, "followed by single characters"),
        ({"kind": "char", "vocab": ["a", "<unk>", "<mask>"]}, r"must be \['<pad>', '<unk>', '<mask>'\]"),
        ({"kind": "char", "vocab": ["<pad>", "<unk>", "<mask>", "a", "a"]}, "repeats a token"),
        ({"kind": "word", "vocab": ["x", "<pad>"]}, "must start with '<pad>'"),
    ],
)
def test_bad_description_is_a_checkpoint_error(description, message):
    with pytest.raises(CheckpointError, match=message):
        tokenizer_from_dict(description)


def test_fit_tokenizer_by_kind():
    assert fit_tokenizer("char", ["ab"]).vocab[3:] == ["a", "b"]
    assert isinstance(fit_tokenizer("byte", ["ab"]), ByteTokenizer)
    with pytest.raises(ConfigError, match=r"tokenizer must be one of \['char', 'byte', 'wordpiece'\], got 'word'"):
        fit_tokenizer("word", ["ab"])
