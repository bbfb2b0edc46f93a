import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cellgen.pipeline import simulate_set
from cellgen.simulate import SimulationConfig


def f1_at(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """Instance F1 at an IoU threshold, by optimal matching (test-side helper)."""
    truth = np.unique(truth, return_inverse=True)[1].reshape(truth.shape)
    pred = np.unique(pred, return_inverse=True)[1].reshape(pred.shape)
    nt, npred = int(truth.max()), int(pred.max())
    if nt + npred == 0:
        return 1.0
    overlap = np.bincount((truth.astype(np.int64) * (npred + 1) + pred).ravel(), minlength=(nt + 1) * (npred + 1))
    overlap = overlap.reshape(nt + 1, npred + 1)
    union = overlap.sum(1)[:, None] + overlap.sum(0)[None] - overlap
    iou = (overlap / np.maximum(union, 1))[1:, 1:]
    rows, cols = linear_sum_assignment(-iou)
    tp = int((iou[rows, cols] >= threshold).sum())
    return 2 * tp / (nt + npred)


@pytest.fixture(scope="session")
def small_set(tmp_path_factory):
    """Nine simulated images spanning the three default tiers, with two noise variants."""
    path = tmp_path_factory.mktemp("sets") / "small.h5"
    config = SimulationConfig(size=128, count=(1, 14), touching=0.8)
    simulate_set(path, config, 9, seed=3, variants=["gaussian", "poisson"], progress=False)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A tiny contour generator and renderer, each trained 3 steps through the CLI on 8 maps."""
    from tests.cli_runner import run_cli

    root = tmp_path_factory.mktemp("models")
    data = simulate_set(root / "train.h5", SimulationConfig(size=64, count=(1, 5), cell_radius_um=5), 8, seed=0,
                        variants=[], progress=False)
    for args in (("contours", "-o", "gen", "--preset", "tiny", "--steps", "3"),
                 ("renderer", "-o", "rend", "--preset", "tiny", "--steps", "3")):
        r = run_cli("train", args[0], "--data", str(data), *args[1:], "-q", cwd=root)
        assert r.returncode == 0, r.stderr
    return {"root": root, "gen": root / "gen" / "generator.pt", "rend": root / "rend" / "renderer.pt", "data": data}
