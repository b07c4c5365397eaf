import numpy as np
import torch

from mhc.data.sequences import FIRST_SYMBOL, MARKER, X_ID, Y_ID, SequencesDataModule, generate_sequences


def group(token: int) -> int:
    return (token - FIRST_SYMBOL) // 4


def test_labels_follow_their_definitions():
    ids, labels = generate_sequences(300, seed=5)
    for i, row in enumerate(ids):
        seq = row[row != 0]
        assert (row[len(seq):] == 0).all()  # right padding only
        assert 12 <= len(seq) <= 32 and (seq == MARKER).sum() == (seq == X_ID).sum() == (seq == Y_ID).sum() == 1
        marker = int(np.flatnonzero(seq == MARKER)[0])
        symbols = seq[(seq >= FIRST_SYMBOL) & (seq < FIRST_SYMBOL + 16)]
        counts = np.bincount([group(t) for t in symbols], minlength=4)
        assert labels["first"][i] == group(seq[0])
        assert labels["before"][i] == group(seq[marker - 1])
        assert labels["majority"][i] == counts.argmax() and (counts == counts.max()).sum() == 1
        assert labels["ordered"][i] == int(np.flatnonzero(seq == X_ID)[0] < np.flatnonzero(seq == Y_ID)[0])


def test_deterministic_and_balanced():
    a, la = generate_sequences(400, seed=1)
    b, lb = generate_sequences(400, seed=1)
    assert np.array_equal(a, b) and all(np.array_equal(la[k], lb[k]) for k in la)
    assert 0.35 < la["ordered"].mean() < 0.65
    assert min(np.bincount(la["first"], minlength=4)) > 60


def test_module_serves_token_batches():
    dm = SequencesDataModule(num_train=64, num_val=32, num_test=32, batch_size=16)
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (16, 32) and batch["tokens"].dtype.is_floating_point is False
    assert set(batch["targets"]) == {"first", "before", "majority", "ordered"}


def test_saved_word_vocabulary_reads_and_writes_the_generated_ids():
    tokenizer = SequencesDataModule().processor().tokenizer
    ids, _ = generate_sequences(20, seed=3)
    texts = tokenizer.decode(torch.from_numpy(ids))
    assert texts[0].count("|") == texts[0].count("X") == 1
    assert torch.equal(tokenizer.encode(texts, max_length=ids.shape[1]), torch.from_numpy(ids))
