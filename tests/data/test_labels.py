import numpy as np
import pytest

from mhc.data.labels import ArrayDataset, validate_labels
from mhc.errors import DataError
from mhc.tasks import TaskSpec

SHAPE = TaskSpec("shape", "multiclass", ["a", "b", "c"])
MARKS = TaskSpec("marks", "multilabel", ["x", "y"], masked=True)


def test_unmasked_missing_label_names_task_and_sample():
    labels = {"shape": np.array([0, 2, -1, 1])}
    with pytest.raises(DataError, match=r"train.csv: row 3 has no label for unmasked task 'shape'"):
        validate_labels([SHAPE], labels, "train.csv", sample_names=["row 1", "row 2", "row 3", "row 4"])


def test_label_outside_classes_is_caught_before_the_loss():
    with pytest.raises(DataError, match=r"sample 1 has label 3 for task 'shape'; expected a class index in \[0, 3\)"):
        validate_labels([SHAPE], {"shape": np.array([0, 3])}, "data")


def test_allowed_set_must_contain_own_label():
    allowed = np.array([[True, False, False], [False, True, True]])
    with pytest.raises(DataError, match="sample 1 has label 'a' for task 'shape' but its allowed set excludes it"):
        validate_labels([SHAPE], {"shape": np.array([0, 0])}, "data", allowed={"shape": allowed})


def test_masked_multilabel_rows_and_sample_encoding():
    labels = {"shape": np.array([1, 2]), "marks": np.array([[1, 0], [-1, -1]])}
    dataset = ArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), labels, [SHAPE, MARKS])
    first, second = dataset[0], dataset[1]
    assert first["targets"]["marks"].tolist() == [1.0, 0.0] and bool(first["label_mask"]["marks"])
    assert not bool(second["label_mask"]["marks"]) and second["targets"]["shape"].item() == 2


def test_child_label_must_fit_under_parent_label():
    coarse = TaskSpec("coarse", "multiclass", ["a", "b"])
    fine = TaskSpec("fine", "multiclass", ["a1", "b1"], masked=True, parent="coarse",
                    allowed_by_parent={"a": ["a1"], "b": ["b1"]})
    labels = {"coarse": np.array([0, 1, 0]), "fine": np.array([0, -1, 1])}
    with pytest.raises(DataError, match="sample 2 has label 'b1' for task 'fine', which is not allowed under coarse='a'"):
        validate_labels([coarse, fine], labels, "data")


@pytest.mark.parametrize("module", ["scenes", "sequences"])
def test_generated_batches_gathered_whole_equal_their_samples_collated(module):
    import torch
    from torch.utils.data import default_collate

    from mhc.data import ScenesDataModule, SequencesDataModule
    from tests.data.test_manifest import assert_same_batch

    dm = (ScenesDataModule if module == "scenes" else SequencesDataModule)(num_train=16, num_val=4, num_test=4)
    dm.set_tasks(dm.task_specs())
    dm.setup("fit")
    dataset = dm.splits["train"]
    rows = [5, 1, 9, 0]
    assert_same_batch(dataset.gather(rows), default_collate([dataset[i] for i in rows]))
    assert all(isinstance(v, torch.Tensor) for v in dataset[3]["targets"].values())
