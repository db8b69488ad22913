"""The package's shape: one installed top-level name and the layer contracts of pyproject.toml."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_only_splitpriv_is_installed():
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert found["include"] == ["splitpriv*"]
    importable_folders = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert importable_folders == {"splitpriv"}, "a second top-level package would be importable from a checkout"


def test_layer_and_cycle_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    completed = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    assert "2 kept, 0 broken" in completed.stdout
