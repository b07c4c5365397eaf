"""The package keeps its layers (docs/architecture.md): import-linter's contract in pyproject.toml
holds, for imports at module level and inside functions alike."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_layers_contract_is_kept(capsys):
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True)
    assert code == 0, capsys.readouterr().out[-3000:]


def test_every_package_is_in_a_layer():
    """A new top-level module or package must be placed in the layers, not left outside them."""
    import tomllib

    layers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    present = {f"mhc.{p.stem if p.suffix == '.py' else p.name}" for p in (REPO / "mhc").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    present -= {"mhc.conf"}  # configuration files, no code
    assert present == placed, f"not in a layer: {sorted(present - placed)}; gone: {sorted(placed - present)}"


@pytest.mark.parametrize("module", ["mhc", "mhc.io", "mhc.model"])
def test_loading_a_model_needs_no_training_stack(module):
    """``import mhc`` (for ``mhc.load``) pulls in neither Lightning nor Hydra."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in ('pytorch_lightning', 'hydra') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
