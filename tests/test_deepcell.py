"""DeepCell Mesmer through the Python 3.10 side environment, for real.

The first run builds the side env (pip install of TensorFlow 2.8 + deepcell 0.12.10, about
2 GB, a few minutes) in the cellgen cache ($CELLGEN_HOME, default ~/.cache/cellgen), where
later runs reuse it. The model is a random-weight Mesmer-architecture network: segmentations
are garbage, so only shapes, dtypes and the worker's life cycle are checked.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from cellgen.bench.methods import deepcell as dc
from cellgen.bench.methods import deepcell_env as denv
from cellgen.bench.methods.base import MethodUnavailable, Segmentation
from cellgen.errors import CellgenError
from tests.segmenter_training import make_random_mesmer_model

try:
    PY310 = denv.find_python310()
except CellgenError:  # CELLGEN_PYTHON310 set to something that is not a Python 3.10
    PY310 = None

needs_py310 = pytest.mark.skipif(
    PY310 is None,
    reason="no Python 3.10 interpreter (CELLGEN_PYTHON310, python3.10 on PATH, ~/.pyenv/versions/3.10*): "
    "deepcell 0.12.10 cannot be installed",
)


def blob_image(h: int, w: int, seed: int) -> np.ndarray:
    """(2, H, W) float32: a few Gaussian nuclei (channel 0) inside wider cytoplasm blobs (channel 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((2, h, w), np.float32)
    for _ in range(8):
        cy, cx = rng.uniform(20, h - 20), rng.uniform(20, w - 20)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img[0] += np.exp(-r2 / (2 * rng.uniform(3, 6) ** 2))
        img[1] += 0.6 * np.exp(-r2 / (2 * rng.uniform(9, 14) ** 2))
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return img


@pytest.fixture(scope="module")
def side_env():
    t0 = time.perf_counter()
    env = denv.ensure_deepcell_env(progress=False)
    print(f"deepcell env ready in {time.perf_counter() - t0:.1f} s: {env}")
    return env


@pytest.fixture(scope="module")
def random_model(side_env, tmp_path_factory):
    path = tmp_path_factory.mktemp("mesmer") / "random-mesmer"
    t0 = time.perf_counter()
    make_random_mesmer_model(path, seed=0)
    print(f"random Mesmer model saved in {time.perf_counter() - t0:.1f} s")
    return path


def _single_line_error(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# --------------------------------------------------------------------------- no Python 3.10 needed


def test_missing_python310_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("CELLGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CELLGEN_PYTHON310", str(tmp_path / "no-such-python3.10"))
    with pytest.raises(MethodUnavailable) as info:
        denv.ensure_deepcell_env()
    msg = _single_line_error(info.value)
    assert "CELLGEN_PYTHON310" in msg and "Python 3.10" in msg
    assert not (tmp_path / "home" / "envs" / denv.ENV_NAME).exists()


def test_bad_option_values():
    with pytest.raises(CellgenError):
        dc.DeepCellMesmer(compartment="cytoplasm")
    with pytest.raises(CellgenError):
        dc.DeepCellMesmer(image_mpp="fast")
    m = dc.DeepCellMesmer(image_mpp="0.65", compartment="nucleus")
    assert m.image_mpp == 0.65 and m.compartment == "nuclear" and m.compartments == ("nucleus",)


# --------------------------------------------------------------------------- side env


@needs_py310
def test_pip_failure_is_one_line_and_leaves_no_env(tmp_path):
    final = tmp_path / "envs" / denv.ENV_NAME
    # what an interrupted setup leaves: a temporary folder, never the env itself
    stale = final.parent / f".{final.name}.tmp-12345"
    (stale / "bin").mkdir(parents=True)
    (stale / denv.MARKER_NAME).write_text("{}")
    # offline and with nothing to install from: pip fails fast, like a network failure would
    with pytest.raises(CellgenError) as info:
        denv._build_env(final, PY310, ("deepcell==0.12.10",), progress=False, pip_args=("--no-index",))
    msg = _single_line_error(info.value)
    assert "pip install exited" in msg and "ERROR:" in msg and "deepcell" in msg.lower()
    assert not final.exists()
    assert not list(final.parent.glob(f".{final.name}.tmp-*")), "temporary env left behind"


@needs_py310
def test_env_is_ready_and_marked(side_env):
    assert side_env == denv.deepcell_env_dir()
    assert denv.env_python(side_env).exists()
    marker = denv._read_marker(side_env)
    assert marker["deepcell"] == denv.DEEPCELL_VERSION
    assert marker["tensorflow"].startswith("2.8")
    assert marker["python"].startswith("3.10")
    assert marker["lock"] == list(denv.DEEPCELL_LOCK)
    assert denv.ensure_deepcell_env() == side_env  # second call: no rebuild


@needs_py310
def test_check_without_weights_names_what_is_missing(side_env, monkeypatch, tmp_path):
    monkeypatch.setenv("CELLGEN_HOME", str(denv.cellgen_home()))  # keep the env while HOME moves
    monkeypatch.setenv("HOME", str(tmp_path))  # deepcell looks in ~/.deepcell
    monkeypatch.delenv("DEEPCELL_ACCESS_TOKEN", raising=False)
    m = dc.DeepCellMesmer()
    with pytest.raises(MethodUnavailable) as info:
        m.check()
    msg = _single_line_error(info.value)
    assert "DEEPCELL_ACCESS_TOKEN is not set" in msg
    assert str(tmp_path / ".deepcell" / "models" / "MultiplexSegmentation-9.tar.gz") in msg
    # with a token, check() downloads the weights itself; offline that is one line too
    from cellgen.bench import weights
    from tests.local_http import closed_port_url

    monkeypatch.setattr(weights, "DEEPCELL_API", closed_port_url() + "/api/getData/")
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", "dummy")
    with pytest.raises(MethodUnavailable, match="cannot reach"):
        m.check()


@needs_py310
def test_check_model_path_missing(tmp_path):
    m = dc.DeepCellMesmer(model=tmp_path / "nope")
    with pytest.raises(MethodUnavailable) as info:
        m.check()
    assert "does not exist" in _single_line_error(info.value)


@needs_py310
def test_mesmer_through_worker(random_model):
    m = dc.DeepCellMesmer(model=str(random_model))
    m.check()
    images = [blob_image(256, 256, 1), blob_image(256, 256, 2), blob_image(256, 320, 3)]
    pids, times = [], []
    try:
        for i, img in enumerate(images):
            t0 = time.perf_counter()
            seg = m.segment(img, pixel_size_um=0.5 if i < 2 else 0.65)
            times.append(time.perf_counter() - t0)
            assert isinstance(seg, Segmentation)
            for labels in (seg.cell, seg.nucleus):
                assert labels is not None
                assert labels.dtype == np.uint32
                assert labels.shape == img.shape[1:]
            pids.append(m.worker.pid)
        print("per-image seconds (first includes worker start):", [round(t, 2) for t in times])
        assert len(set(pids)) == 1, "worker was not reused"
        assert m.workers_started == 1 and m.worker.requests == 3
        info = m.describe()
        assert info["method"] == "deepcell" and info["deepcell"] == denv.DEEPCELL_VERSION
        assert info["tensorflow"].startswith("2.8") and info["model"] == str(random_model)

        # an error inside the worker comes back as one line, and the worker keeps serving
        with pytest.raises(CellgenError) as err:
            m.worker.request({"op": "segment", "compartment": "cytoplasm"}, {"image": np.zeros((64, 64, 2), np.float32)})
        msg = _single_line_error(err.value)
        assert msg.startswith("deepcell worker failed on segment: ValueError: compartment must be one of")
        assert m.worker.alive and m.worker.pid == pids[0]

        # a worker that dies during a request is detected at once and reported in one line ...
        killer = threading.Timer(0.5, os.kill, (m.worker.pid, signal.SIGKILL))
        killer.start()
        t0 = time.perf_counter()
        with pytest.raises(CellgenError) as err:
            m.segment(blob_image(512, 512, 4), 0.5)
        killer.join()
        assert time.perf_counter() - t0 < 10
        assert "killed by signal 9 during segment" in _single_line_error(err.value)
        # ... and replaced by a fresh one on the next image
        seg = m.segment(images[0], 0.5)
        assert seg.cell.shape == (256, 256) and m.workers_started == 2 and m.worker.pid != pids[0]
        # a worker found dead between images is replaced silently
        proc = m.worker.proc
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        seg = m.segment(images[1], 0.5)
        assert seg.nucleus.shape == (256, 256) and m.workers_started == 3
    finally:
        proc = m.worker.proc if m.worker is not None else None
        m.close()
    assert m.worker is None
    assert proc is not None and proc.poll() is not None, "worker still running after close()"
    m.close()  # idempotent


@needs_py310
def test_worker_error_is_one_clear_line(side_env, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    m = dc.DeepCellMesmer(model=str(not_a_model))
    m.check()  # the path exists; only loading can tell
    try:
        with pytest.raises(CellgenError) as err:
            m.segment(blob_image(256, 256, 0), 0.5)
        msg = _single_line_error(err.value)
        assert msg.startswith("deepcell worker could not load the model:")
        assert str(not_a_model) in msg
        # the failure is remembered: no new worker start per image
        t0 = time.perf_counter()
        with pytest.raises(CellgenError):
            m.segment(blob_image(256, 256, 0), 0.5)
        assert time.perf_counter() - t0 < 1
    finally:
        m.close()


@needs_py310
def test_worker_start_timeout_kills_it(side_env, random_model):
    m = dc.DeepCellMesmer(model=str(random_model), startup_timeout=0.5)
    try:
        with pytest.raises(CellgenError) as err:
            m.segment(blob_image(256, 256, 0), 0.5)
        assert "did not answer within" in _single_line_error(err.value)
    finally:
        m.close()


@needs_py310
def test_bench_cli_runs_mesmer_through_the_side_env(random_model, tmp_path):
    """`cellgen bench --method deepcell --model PATH` end to end (random weights: no quality asserted)."""
    import json

    from cellgen.pipeline import simulate_set
    from cellgen.simulate import SimulationConfig
    from tests.cli_runner import run_cli

    data = simulate_set(tmp_path / "set.h5", SimulationConfig(size=256, count=10), 2, seed=5, variants=[],
                        progress=False)
    out = tmp_path / "mesmer"
    r = run_cli("bench", "--method", "deepcell", "--model", random_model, "--data", data, "-o", out, "--n-boot", "20",
                "-q")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["method"]["method"] == "deepcell"
    assert {s["compartment"] for s in summary["summary"]} == {"cell", "nucleus"}
    assert all(s["n_images"] == 2 for s in summary["summary"] if s["tier"] == "all")
