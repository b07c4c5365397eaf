"""Built-in tokenizers: text -> padded token ids, saved with the model as plain data.

A tokenizer is part of a text model's processor (``TextProcessor.tokenizer``): it travels in
checkpoints and exports as a small JSON-able dict (:meth:`Tokenizer.to_dict`) and is rebuilt
from it with :func:`tokenizer_from_dict`; nothing is pickled and nothing is downloaded.

* ``char``: the characters seen in the training texts (:meth:`CharTokenizer.fit`); a
  character never seen in training becomes ``<unk>``.
* ``byte``: the 256 UTF-8 byte values, fixed; nothing to fit and nothing unknown.
* ``word``: a fixed list of whitespace-separated words (the generated sequences' vocabulary).
* ``pretrained``: a model's own subword tokenizer (WordPiece, BPE, Unigram), the fast
  tokenizer of ``transformers.AutoTokenizer``, saved as its ``tokenizer.json`` text and run by
  the ``tokenizers`` library; special tokens ([CLS], [SEP], <s>) are added as the model expects.
* ``wordpiece``: a WordPiece vocabulary (BERT's normalisation: lower case, accents stripped;
  words split at whitespace and punctuation) trained by the ``tokenizers`` library on the
  training texts (:func:`fit_wordpiece`), then held and saved as a ``pretrained`` one.

``char`` and ``byte`` reserve ``<pad>`` = 0, ``<unk>`` = 1 and ``<mask>`` = 2 (the mask token
is for masked-token pretraining). Batches are right-padded with ``pad_id`` and truncated to
``max_length``, so a sequence backbone masks the padding out of attention and pooling::

    tokenizer = CharTokenizer.fit(["abba", "cab"])
    tokenizer.encode(["cab", "abcd"], max_length=3)   # tensor([[5, 3, 4], [3, 4, 5]])
    tokenizer.decode([5, 3, 0])                       # 'ca'
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from mhc.errors import CheckpointError, ConfigError, DataError

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIALS = (PAD, UNK, MASK)  # ids 0, 1, 2 of the char and byte tokenizers
FITTED_KINDS = ("char", "byte", "wordpiece")  # the kinds a data module builds from its training texts
WORDPIECE_SIZE = 16384  # tokenizer=wordpiece: the vocabulary size unless max_size says otherwise


class Tokenizer:
    """Text -> token ids. Subclasses give ``vocab_size``, ``ids`` (one text), ``text`` (ids of
    one text back to a string) and ``to_dict``."""

    kind: ClassVar[str]
    pad_id: int = 0
    unk_id: int | None = 1
    mask_id: int | None = 2

    @property
    def vocab_size(self) -> int:
        """Number of token ids, the reserved ones included (an embedding table's size)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.vocab_size

    def ids(self, text: str) -> list[int]:
        """The token ids of one text, unpadded and untruncated."""
        raise NotImplementedError

    def text(self, ids: Sequence[int]) -> str:
        """One sequence of ids back to text; padding is dropped."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able data that :func:`tokenizer_from_dict` rebuilds this tokenizer from."""
        raise NotImplementedError

    def encode(self, texts: str | Sequence[str], max_length: int) -> Tensor:
        """Token ids long [B, max_length], right-padded with ``pad_id``; longer texts are cut
        at ``max_length``. One string gives [1, max_length]. An empty text is a
        :class:`DataError` (an all-padding sequence has nothing to attend to)."""
        if isinstance(texts, str):
            texts = [texts]
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        batch = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text {row}: expected a string, got {type(text).__name__}")
            ids = self.ids(text)[:max_length]
            if not ids:
                raise DataError(f"text {row} is empty; every text needs at least one token")
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return batch

    def decode(self, ids: Tensor | Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        """Texts of token ids: [L] -> one string, [B, L] -> a list; padding is dropped."""
        rows = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if rows and isinstance(rows[0], (list, tuple)):
            return [self.text(row) for row in rows]
        return self.text(rows)


def _special_name(tokenizer: Tokenizer, token: int) -> str | None:
    """``<unk>``/``<mask>`` for those ids, ``""`` for padding, ``None`` for an ordinary id."""
    names = {tokenizer.pad_id: "", tokenizer.unk_id: UNK, tokenizer.mask_id: MASK}
    return names.get(token)


class CharTokenizer(Tokenizer):
    """One id per character seen in the training texts, after the three reserved ids.

    Args:
        chars: the characters, in id order (ids 3, 4, ...); usually from :meth:`fit`.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.vocab: list[str] = [*SPECIALS, *chars]
        self.index = {char: i for i, char in enumerate(self.vocab) if i >= len(SPECIALS)}

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "CharTokenizer":
        """The characters of ``texts`` seen at least ``min_count`` times; with ``max_size`` (the
        whole vocabulary, reserved ids included) only the most frequent are kept. Ids follow
        code point order, so the same texts always give the same ids."""
        if min_count < 1:
            raise ConfigError(f"min_count must be at least 1, got {min_count}")
        if max_size is not None and max_size <= len(SPECIALS):
            raise ConfigError(f"max_size must exceed the {len(SPECIALS)} reserved ids, got {max_size}")
        counts = Counter(char for text in texts for char in text)
        frequent = sorted((char for char, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        if max_size is not None:
            frequent = frequent[: max_size - len(SPECIALS)]
        return cls(sorted(frequent))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        return [self.index.get(char, self.unk_id) for char in text]

    def text(self, ids: Sequence[int]) -> str:
        pieces = []
        for token in ids:
            special = _special_name(self, token)
            pieces.append(special if special is not None else self.vocab[token])
        return "".join(pieces)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self.vocab)}


class ByteTokenizer(Tokenizer):
    """The UTF-8 bytes of a text: byte ``b`` is id ``b + 3``; a fixed vocabulary of 259 ids."""

    kind = "byte"
    offset = len(SPECIALS)

    @property
    def vocab_size(self) -> int:
        return 256 + self.offset

    def ids(self, text: str) -> list[int]:
        return [byte + self.offset for byte in text.encode("utf-8")]

    def text(self, ids: Sequence[int]) -> str:
        pieces: list[str] = []
        run = bytearray()  # consecutive bytes, decoded together (a character may span several)
        for token in ids:
            special = _special_name(self, token)
            if special is None:
                run.append(token - self.offset)
                continue
            pieces += [run.decode("utf-8", errors="replace"), special]
            run.clear()
        return "".join([*pieces, run.decode("utf-8", errors="replace")])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


class WordTokenizer(Tokenizer):
    """A fixed vocabulary of whitespace-separated words, ``vocab[0]`` = ``<pad>``.

    ``<unk>`` and ``<mask>`` have ids only where the vocabulary lists them; without ``<unk>``,
    a word outside the vocabulary is a :class:`DataError`. The generated sequences use it::

        WordTokenizer(["<pad>", "|", "a", "b"]).encode("a | b", max_length=4)   # [[2, 1, 3, 0]]
    """

    kind = "word"

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = list(vocab)
        self.index = {word: i for i, word in enumerate(self.vocab)}
        self.unk_id = self.index.get(UNK)
        self.mask_id = self.index.get(MASK)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            token = self.index.get(word, self.unk_id)
            if token is None:
                raise DataError(f"unknown token '{word}' in '{text}'; the vocabulary is {self.vocab[1:]}")
            ids.append(token)
        return ids

    def text(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[token] for token in ids if token != self.pad_id)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self.vocab)}


MAX_TOKENIZER_JSON = 64 << 20  # characters; a larger stored tokenizer is refused before it is parsed


class PretrainedTokenizer(Tokenizer):
    """A model's own fast tokenizer (``transformers.AutoTokenizer``), held as ``tokenizers`` JSON.

    Texts are encoded as the model was trained to read them, special tokens included, and cut
    to ``max_length`` by the tokenizer's own truncation (which keeps the closing special token).
    ``pad_id`` is the tokenizer's padding token, or its end-of-text token where it has none
    (decoder models); a sequence's padding is the run of ``pad_id`` at its end.

    Args:
        tokenizer_json: the fast tokenizer's JSON text (``tokenizer.json``).
        pad_id, unk_id, mask_id: its special tokens' ids (``None`` where it has none).
        name: where it came from (a hub name or a folder), for model cards.
    """

    kind: ClassVar[str] = "pretrained"

    def __init__(self, tokenizer_json: str, pad_id: int, unk_id: int | None = None, mask_id: int | None = None,
                 name: str | None = None) -> None:
        from tokenizers import Tokenizer as FastTokenizer

        self.json = tokenizer_json
        self.fast = FastTokenizer.from_str(tokenizer_json)
        self.fast.no_padding()
        self.pad_id, self.unk_id, self.mask_id, self.name = int(pad_id), unk_id, mask_id, name

    @classmethod
    def from_pretrained(cls, source: str) -> "PretrainedTokenizer":
        """The fast tokenizer of ``source``: a Hugging Face Hub name (downloaded once, then
        cached) or a local folder, as ``transformers.AutoTokenizer.from_pretrained`` finds it."""
        from transformers import AutoTokenizer

        try:
            loaded = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ConfigError(f"backbone.tokenizer: no tokenizer at '{source}' ({' '.join(str(err).split())[:300]})") from None
        if not getattr(loaded, "is_fast", False):
            raise ConfigError(f"backbone.tokenizer: '{source}' has no fast tokenizer (tokenizer.json)")
        pad_id = loaded.pad_token_id if loaded.pad_token_id is not None else loaded.eos_token_id
        if pad_id is None:
            raise ConfigError(f"backbone.tokenizer: '{source}' has neither a padding nor an end-of-text token")
        return cls(loaded.backend_tokenizer.to_str(), pad_id, loaded.unk_token_id, loaded.mask_token_id, name=str(source))

    @property
    def vocab_size(self) -> int:
        return self.fast.get_vocab_size(with_added_tokens=True)

    def ids(self, text: str) -> list[int]:
        self.fast.no_truncation()
        return self.fast.encode(text).ids

    def encode(self, texts: str | Sequence[str], max_length: int) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text {row}: expected a string, got {type(text).__name__}")
        self.fast.enable_truncation(max_length)
        encoded = self.fast.encode_batch(list(texts))
        batch = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for row, encoding in enumerate(encoded):
            if not encoding.ids:
                raise DataError(f"text {row} is empty; every text needs at least one token")
            batch[row, : len(encoding.ids)] = torch.tensor(encoding.ids, dtype=torch.long)
        return batch

    def text(self, ids: Sequence[int]) -> str:
        return self.fast.decode([int(i) for i in ids], skip_special_tokens=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.json, "pad_id": self.pad_id, "unk_id": self.unk_id,
                "mask_id": self.mask_id, "name": self.name}

    @classmethod
    def from_dict(cls, description: Mapping[str, Any]) -> "PretrainedTokenizer":
        """Rebuild from :meth:`to_dict` data, checked before the JSON is parsed."""
        text = description.get("json")
        if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKENIZER_JSON:
            raise CheckpointError(f"invalid pretrained tokenizer: 'json' must be a tokenizer.json text of at most "
                                  f"{MAX_TOKENIZER_JSON} characters")
        ids = {key: description.get(key) for key in ("pad_id", "unk_id", "mask_id")}
        if not isinstance(ids["pad_id"], int) or not all(v is None or (isinstance(v, int) and v >= 0) for v in ids.values()):
            raise CheckpointError("invalid pretrained tokenizer: 'pad_id' must be a token id, 'unk_id' and 'mask_id' ids or null")
        name = description.get("name")
        try:
            tokenizer = cls(text, **ids, name=name if isinstance(name, str) else None)
        except Exception as err:  # noqa: BLE001 - the tokenizers library's parse errors
            raise CheckpointError(f"invalid pretrained tokenizer: {' '.join(str(err).split())[:200]}") from None
        if any(v is not None and v >= tokenizer.vocab_size for v in ids.values()):
            raise CheckpointError(f"invalid pretrained tokenizer: a special token id is beyond its {tokenizer.vocab_size} tokens")
        return tokenizer


def fit_wordpiece(texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> PretrainedTokenizer:
    """A WordPiece tokenizer trained on ``texts``: at most ``max_size`` tokens (default
    :data:`WORDPIECE_SIZE`, the reserved ones included), each seen at least ``min_count`` times;
    ``<pad>``, ``<unk>`` and ``<mask>`` are ids 0, 1 and 2 as in the char tokenizer."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    fast = FastTokenizer(models.WordPiece(unk_token=UNK))
    fast.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    fast.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=max_size or WORDPIECE_SIZE, min_frequency=min_count,
                                        special_tokens=list(SPECIALS), show_progress=False)
    fast.train_from_iterator(texts, trainer)
    return PretrainedTokenizer(fast.to_str(), pad_id=0, unk_id=1, mask_id=2, name="wordpiece")


def fit_tokenizer(kind: str, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Tokenizer:
    """A ``char`` or ``wordpiece`` tokenizer fitted on ``texts`` (the training split), or the fixed ``byte`` one."""
    if kind == "char":
        return CharTokenizer.fit(texts, min_count=min_count, max_size=max_size)
    if kind == "wordpiece":
        return fit_wordpiece(texts, min_count=min_count, max_size=max_size)
    if kind == "byte":
        return ByteTokenizer()
    raise ConfigError(f"tokenizer must be one of {list(FITTED_KINDS)}, got '{kind}'")


def tokenizer_from_dict(description: Any) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` data (as saved in a checkpoint); a
    malformed description is a :class:`CheckpointError`."""
    if not isinstance(description, Mapping):
        raise CheckpointError(f"invalid tokenizer: expected a mapping, got a {type(description).__name__}")
    kind = description.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == PretrainedTokenizer.kind:
        return PretrainedTokenizer.from_dict(description)
    if kind not in ("char", "word"):
        raise CheckpointError(f"invalid tokenizer: unknown kind {kind!r}; expected 'byte', 'char', 'word' or 'pretrained'")
    vocab = description.get("vocab")
    if not isinstance(vocab, list) or not all(isinstance(token, str) for token in vocab):
        raise CheckpointError(f"invalid {kind} tokenizer: 'vocab' must be a list of strings")
    if len(set(vocab)) != len(vocab):
        raise CheckpointError(f"invalid {kind} tokenizer: 'vocab' repeats a token")
    if kind == "word":
        if not vocab or vocab[0] != PAD:
            raise CheckpointError(f"invalid word tokenizer: 'vocab' must start with '{PAD}'")
        return WordTokenizer(vocab)
    if tuple(vocab[: len(SPECIALS)]) != SPECIALS or not all(len(char) == 1 for char in vocab[len(SPECIALS) :]):
        raise CheckpointError(
            f"invalid char tokenizer: 'vocab' must be {list(SPECIALS)} followed by single characters"
        )
    return CharTokenizer(vocab[len(SPECIALS) :])
