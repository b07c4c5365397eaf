from mhc.api.build import fill_defaults
from mhc.tasks import TaskSpec


def test_defaults_fill_only_what_the_data_left_unset():
    declared = TaskSpec("t", "multiclass", ["a", "b"], loss="focal", hidden=[8])
    filled = fill_defaults(declared, {"loss": "ce", "hidden": [64], "dropout": 0.2})
    assert filled.loss == "focal" and filled.hidden == [8] and filled.dropout == 0.2
