"""Names from the data written into CSV files and model cards stay text."""

import pytest
import torch

from mhc.api.evaluate import predictions_table
from mhc.predictor import TaskPrediction
from mhc.text import markdown_cell, spreadsheet_cell


@pytest.mark.parametrize(("value", "written"), [
    ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\tstart", "'\tstart"),
    ("-1", "-1"), ("+0.5", "+0.5"), ("cat", "cat"), ("", ""), (3, 3),
])
def test_a_cell_a_spreadsheet_would_run_is_written_as_text(value, written):
    assert spreadsheet_cell(value) == written


def test_the_predictions_table_writes_formula_like_names_as_text():
    prediction = TaskPrediction(classes=["=1+1", "-1"], labels=["=1+1", "-1"], probs=torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    table = predictions_table("image", ["=cmd.png", "b.png"], {"kind": prediction})
    assert table["image"].tolist() == ["'=cmd.png", "b.png"]
    assert table["kind"].tolist() == ["'=1+1", "-1"]
    assert list(table.columns) == ["image", "kind", "kind__p_=1+1", "kind__p_-1"]  # headers start with the task name


def test_a_class_name_in_a_model_card_is_text_not_markup():
    assert markdown_cell("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert markdown_cell("a|b & c") == "a\\|b &amp; c"


def test_the_model_card_shows_class_names_as_text(tmp_path):
    from mhc.export import export_model
    from mhc.model import MultiHeadNet
    from mhc.tasks import TaskSpec

    net = MultiHeadNet({"name": "cnn", "widths": [8]}, [TaskSpec("kind", "multiclass", ["<script>x</script>", "a|b"])])
    card = (export_model(net, tmp_path / "export", ["safetensors"]) / "README.md").read_text()
    assert "| kind | multiclass | &lt;script&gt;x&lt;/script&gt;, a\\|b |" in card and "<script>" not in card
