"""``data.num_workers=auto``: loader workers from the cores each training process gets."""

import pytest

from mhc.data import ScenesDataModule
from mhc.data.datamodule import auto_workers, available_cores


@pytest.mark.parametrize("cores, processes, workers", [
    (2, 1, 0),     # workers would compete with the step (docs/benchmarks.md, "Loader workers")
    (4, 1, 3),     # one core steps, the rest load
    (16, 2, 7),    # DDP: each process gets its share
    (8, 4, 0),
    (64, 1, 8),    # at most 8
])
def test_auto_gives_each_process_its_share_of_the_cores_less_one(cores, processes, workers):
    assert auto_workers(cores, processes) == workers


def test_auto_reads_the_launchers_local_world_size(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert auto_workers(cores=16) == 7
    assert ScenesDataModule(num_workers="auto").num_workers == auto_workers(available_cores(), 2)
    with pytest.raises(Exception, match="data.num_workers must be an integer, got 'many'"):
        ScenesDataModule(num_workers="many")
