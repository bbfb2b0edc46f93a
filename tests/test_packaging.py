"""A wheel built from this tree carries the default models and runs ``cellgen sample`` outside the checkout.

The wheel is installed without dependencies into a virtual environment that sees the
already installed ones (``--system-site-packages``), so the test costs one build, not a
download of torch; what it checks is what a non-editable install changes: where the
package, its models and its data files come from.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cellgen.checkpoint import sha256_of
from cellgen.datasets.h5 import verify
from cellgen.defaults import FILES, REPOSITORY

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the working tree (the build writes build/ and egg-info there, not here)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "cellgen", src / "cellgen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(REPOSITORY, src / "checkpoints")
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(dist), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return next(dist.glob("cellgen-*.whl"))


def test_wheel_carries_the_default_models_their_cards_and_plugin_files(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for file in FILES.values():
            card = json.loads(zf.read(f"cellgen/checkpoints/{Path(file).stem}.json"))
            packaged = zf.read(f"cellgen/checkpoints/{file}")
            assert packaged == (REPOSITORY / file).read_bytes()
            assert card["sha256"] == sha256_of(REPOSITORY / file)
        assert {"cellgen/napari.yaml", "cellgen/data/registry.json"} <= names
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "[napari.manifest]" in entry_points and "cellgen = cellgen:napari.yaml" in entry_points
    assert not any(n.startswith(("tests/", "checkpoints/", "benchmarks/")) for n in names)


def test_build_refuses_weights_that_do_not_match_their_card(tmp_path):
    src = tmp_path / "src"
    (src / "cellgen").mkdir(parents=True)
    shutil.copy2(ROOT / "cellgen" / "defaults.py", src / "cellgen")  # where setup.py reads the default names
    (src / "checkpoints").mkdir()
    for file in FILES.values():
        (src / "checkpoints" / file).write_bytes(b"other weights")
        shutil.copy2((REPOSITORY / file).with_suffix(".json"), src / "checkpoints")
    shutil.copy2(ROOT / "setup.py", src)
    r = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path('setup.py')['model_files']()"],
                       cwd=src, capture_output=True, text=True)
    assert r.returncode != 0 and "its card" in r.stderr.strip().splitlines()[-1]


def test_installed_wheel_samples_with_its_own_models_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                        "-q", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLGEN_") and k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import cellgen.defaults as d; print(d.__file__); "
                            "print(d.checkpoints_dir())"], cwd=work, env=env, capture_output=True, text=True)
    module, models = where.stdout.split()
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert Path(module).is_relative_to(site) and Path(models) == site / "cellgen" / "checkpoints"
    r = subprocess.run([str(venv / "bin" / "cellgen"), "sample", "--psi", "0.5", "--seeds", "0", "--variants",
                        "clean", "-o", "s.h5", "-q"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summary = verify(work / "s.h5")
    assert summary["n_images"] == 1 and summary["image_size"] == [256, 256]
    import h5py

    with h5py.File(work / "s.h5", "r") as f:  # made with the packaged weights, by sha256
        assert f.attrs["generator_sha256"] == sha256_of(site / "cellgen" / "checkpoints" / FILES["generator"])
        assert f.attrs["renderer_sha256"] == sha256_of(site / "cellgen" / "checkpoints" / FILES["renderer"])
