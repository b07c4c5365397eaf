import json
import subprocess
import sys

import torch

import mhc
from mhc.api import export
from mhc.io import save_checkpoint


def test_export_writes_every_format_beside_the_checkpoints(make_cfg, tiny_net, tmp_path):
    ckpt = save_checkpoint(tiny_net, tmp_path / "run" / "checkpoints" / "last.ckpt", metrics={"coarse": {"acc": 0.75}})
    folder = export(make_cfg(f"ckpt={ckpt}", "format=[torch_export,onnx,safetensors]", config_name="export"))
    assert folder == tmp_path / "run" / "export"
    config = json.loads((folder / "config.json").read_text())
    assert config["files"] == ["model.safetensors", "model.onnx", "model.pt2", "config.json", "README.md"]
    assert all((folder / name).is_file() for name in config["files"])
    assert "| coarse | 0.7500 |" in (folder / "README.md").read_text()
    x = torch.rand(2, 3, 64, 64)
    assert all(torch.equal(mhc.load(folder)(x)[t], tiny_net(x)[t]) for t in tiny_net.tasks)


def test_unknown_format_exits_with_one_line(tiny_net, tmp_path):
    ckpt = save_checkpoint(tiny_net, tmp_path / "m.ckpt")
    proc = subprocess.run([sys.executable, "-m", "mhc.cli.export", f"ckpt={ckpt}", "format=[onnx,tflite]",
                           f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == "error: format: expected one or more of ['safetensors', 'onnx', 'torch_export'], got 'tflite'"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "export").exists()  # a failed command leaves no folder
