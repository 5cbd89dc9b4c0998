"""The shape of the package: layers (import-linter), thin apps, one entry wrapper, light imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = sorted((ROOT / "amir_pl" / "apps").glob("[!_]*.py"))
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([str(LINT_IMPORTS)], cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is a dev dependency (pip install -e .[dev])")
def test_layers_and_independent_apps_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is a dev dependency (pip install -e .[dev])")
@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/errors.py", "import amir_pl.training.model", "stages are layered"),  # an arrow running back up
        ("apps/evaluate.py", "import amir_pl.apps.train", "no app imports another app"),
    ],
)
def test_the_contracts_catch_a_wrong_import(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "amir_pl", tmp_path / "amir_pl")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "amir_pl" / module, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout


@pytest.mark.parametrize("app", APPS, ids=lambda path: path.stem)
def test_apps_are_thin_and_share_one_entry(app):
    text = app.read_text()
    assert len(text.splitlines()) <= 80, f"{app.name}: move the work into the library"
    assert "@hydra_app(" in text and "hydra.main" not in text


def test_every_console_script_has_its_app():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(target for target in scripts.values()) == sorted(f"amir_pl.apps.{app.stem}:main" for app in APPS)


def test_the_model_and_the_report_module_import_without_matplotlib():
    code = "import sys, amir_pl.training.model, amir_pl.training.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_importing_the_training_code_leaves_the_matplotlib_backend_alone():
    """Lightning's torchmetrics imports matplotlib; our report sets the off-screen backend only when it draws."""
    code = (
        "import matplotlib; matplotlib.use('pdf'); import amir_pl.training.module, amir_pl.training.fault_tolerance; "
        "print(matplotlib.get_backend())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "pdf", result.stderr[-2000:]
