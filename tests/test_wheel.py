"""The package as users install it: a wheel (configs included) in a fresh environment, run from elsewhere."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import FAST

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(command, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A new virtual environment holding only the wheel; the dependencies are this environment's."""
    work = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", work / "dist", ROOT],
        work,
    )
    (wheel,) = (work / "dist").glob("amir_pl-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], work)
    # The dependencies: this environment's site-packages on the new one's path (not its .pth files,
    # so the editable install of this checkout stays out).
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel], work)
    return venv


def test_the_wheel_ships_the_configs_and_runs_outside_the_checkout(wheel_env, tiny_h5, tmp_path):
    bin_dir = wheel_env / "bin"
    where = run([bin_dir / "python", "-c", "import amir_pl.conf; print(amir_pl.conf.__file__)"], tmp_path).stdout
    assert str(wheel_env) in where and str(ROOT) not in where
    assert "amir-train" in run([bin_dir / "amir-train", "--help"], tmp_path).stdout
    job = run([bin_dir / "amir-prepare", "--cfg", "job"], tmp_path).stdout
    assert "features:" in job and "clip_seconds: 3.0" in job
    run([bin_dir / "python", "-m", "amir_pl.apps.evaluate", "--help"], tmp_path)
    train = run([bin_dir / "amir-train", f"data.path={tiny_h5}", *FAST, "trainer.max_epochs=1", "logger=csv"], tmp_path)
    assert "top-1 error" in train.stdout
    assert list((tmp_path / "outputs" / "train").glob("*/metrics.json"))
