import hashlib
import json

import numpy as np
import pytest
import torch

from cellgen import quality
from cellgen.quality import backbones as q_backbones
from cellgen.quality import report as q_report
from cellgen.errors import CellgenError
from cellgen.pipeline import simulate_set
from cellgen.simulate import SimulationConfig
from tests.cli_runner import run_cli as run

# sha256 of "key:shape" lines (in order) of torchvision's Inception3(num_classes=1008,
# aux_logits=False) with pytorch-fid's FID blocks: the layout pytorch-fid loads
# pt_inception-2015-12-05-6726825d.pth into (566 entries, num_batches_tracked included).
# Computed once from torchvision 0.28.0's source; cellgen itself never imports torchvision.
FID_LAYOUT_SHA256 = "2b3c5a82374d4f7e4f3f4c64fb53c93f8b59aaf4d85ac795e743ad11373aee9d"


def one_line_error(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def effnet():
    return quality.load_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """Two small simulated sets from the same recipe (different seeds) and a brighter one."""
    root = tmp_path_factory.mktemp("quality")
    config = SimulationConfig(size=96, pixel_size_um=1.0, count=(2, 22), touching=0.8)
    a, b = root / "a.h5", root / "b.h5"
    simulate_set(a, config, 8, seed=0, progress=False)
    simulate_set(b, config, 8, seed=100, progress=False)
    return a, b


# -- Fréchet distance --------------------------------------------------------------------------
def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_matches_closed_forms():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert quality.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # diagonal covariances: sum over dimensions of the 1-D formula
    v1, v2 = np.array([1.0, 2.0, 0.5]), np.array([4.0, 0.5, 0.5])
    expect = 1.0 + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert quality.frechet_distance([0, 0, 0], np.diag(v1), [1, 0, 0], np.diag(v2)) == pytest.approx(expect)
    # general (non-commuting) covariances: tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) via eigh
    rng = np.random.default_rng(0)
    s1, s2 = _spd(rng, 6), _spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = psd_sqrt(s1)
    expect = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * psd_sqrt(r1 @ s2 @ r1))
    assert quality.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-8)
    assert quality.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expect, rel=1e-8)  # symmetric


def test_fd_identical_zero_and_shift_is_squared_norm():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(200, 16))
    assert quality.fd_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    # a constant shift keeps the covariance, so the distance is exactly |shift|^2
    shift = np.full(16, 0.5)
    assert quality.fd_from_features(feats, feats + shift) == pytest.approx(16 * 0.25, rel=1e-8)
    near = quality.fd_from_features(feats, rng.normal(size=(200, 16)))
    far = quality.fd_from_features(feats, rng.normal(size=(200, 16)) + 1.0)
    assert 0 < near < far


def test_fd_with_fewer_samples_than_dimensions():
    # n vectors in D >> n dimensions (small tiers): the covariances have rank n - 1, and
    # tr sqrt(S_a S_b) is the nuclear norm of A B^T / sqrt((n_a - 1)(n_b - 1)) for the
    # centred feature matrices A, B: a closed form that needs no matrix square root
    rng = np.random.default_rng(2)
    for na, nb, d in ((3, 4, 64), (20, 20, 64), (2, 2, 1280)):
        a, b = rng.normal(size=(na, d)), rng.normal(size=(nb, d)) + 0.3
        ac, bc = a - a.mean(0), b - b.mean(0)
        nuclear = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((na - 1) * (nb - 1))
        expect = (np.sum((a.mean(0) - b.mean(0)) ** 2) + (ac ** 2).sum() / (na - 1) + (bc ** 2).sum() / (nb - 1)
                  - 2 * nuclear)
        assert quality.fd_from_features(a, b) == pytest.approx(expect, rel=1e-6)
    # the Gaussian-statistics route (sqrtm, or its symmetric fallback on singular products) agrees
    a, b = rng.normal(size=(5, 40)), rng.normal(size=(7, 40)) + 0.2
    assert quality.frechet_distance(*quality.feature_stats(a), *quality.feature_stats(b)) == \
        pytest.approx(quality.fd_from_features(a, b), rel=1e-6)
    with pytest.raises(CellgenError, match="at least 2"):
        quality.fd_from_features(a[:1], b)


# -- 3-channel conventions ---------------------------------------------------------------------
def test_image_and_mask_rgb_conventions():
    img = np.zeros((1, 2, 4, 4), np.uint16)
    img[0, 0, 0, 0] = 65535  # nucleus channel
    img[0, 1, 1, 1] = 32768  # cytoplasm channel
    rgb = quality.images_to_rgb(img)
    assert rgb.shape == (1, 3, 4, 4) and rgb.dtype == np.float32
    assert rgb[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0]  # nucleus -> blue
    assert rgb[0, 1, 1, 1] == pytest.approx(0.5, abs=1e-4) and rgb[0, 0].max() == 0  # cytoplasm -> green, R empty
    cell = np.zeros((1, 7, 7), np.uint32)
    cell[0, 1:6, 1:6] = 1  # one 5 x 5 cell with a nucleus in its centre
    semantic = np.where(cell > 0, 255, 0).astype(np.uint8)
    semantic[0, 3, 3] = 128
    m = quality.masks_to_rgb(semantic, cell)
    assert m[0, :, 2, 2].tolist() == [0, 1, 0]  # cytoplasm -> green
    assert m[0, :, 3, 3].tolist() == [0, 0, 1]  # nucleus -> blue
    assert m[0, :, 1, 3].tolist() == [1, 1, 0]  # the cell's own outline -> red (on cytoplasm)
    assert m[0, :, 0, 0].tolist() == [0, 0, 0]  # background black
    assert m[0, 0].sum() == 16  # the 16 pixels of the 5 x 5 ring


def test_label_resampling_keeps_labels():
    x = np.arange(16, dtype=np.uint32).reshape(1, 4, 4)
    up = q_report._resize_labels(x, (8, 8))
    assert set(np.unique(up)) == set(range(16)) and up[0, 0, 0] == 0 and up[0, 7, 7] == 15
    assert np.array_equal(q_report._resize_labels(up, (4, 4)), x)


# -- EfficientNet-Lite0: the packaged ImageNet weights -----------------------------------------
def test_effnet_weights_load_strictly(effnet):
    sd = torch.load(effnet.weights, map_location="cpu", weights_only=True)
    own = quality.EfficientNetLite0().state_dict()
    assert list(sd) == list(own)  # every key, in the same order
    assert all(tuple(sd[k].shape) == tuple(own[k].shape) for k in own)
    assert effnet.weights_sha256 == quality.EFFNET_SHA256
    net_sd = effnet.net.state_dict()
    assert all(torch.equal(net_sd[k], sd[k]) for k in sd)
    # a file that lacks a tensor is refused with one line naming it
    bad = dict(sd)
    del bad["_blocks.3._depthwise_conv.weight"]
    with pytest.raises(CellgenError, match="missing tensors.*_blocks.3._depthwise_conv.weight"):
        q_backbones._strict_load(quality.EfficientNetLite0(), bad, "test")


def test_effnet_is_the_trained_imagenet_model(effnet):
    # photographs that scikit-image ships: a cat and a cup of coffee, classified by the
    # packaged net with our architecture and input normalisation
    from skimage import data

    photos = np.stack([np.transpose(p[:300, :300], (2, 0, 1)) for p in (data.chelsea(), data.coffee())])
    rgb = photos.astype(np.float32) / 255
    top = effnet.logits(rgb).argmax(1)
    assert 281 <= top[0] <= 285  # ImageNet's domestic-cat classes (tabby ... Egyptian cat)
    assert top[1] in (967, 968, 504)  # espresso, cup, coffee mug
    # a randomly initialised net of the same shape gives different features
    rand = quality.Backbone("efficientnet-lite0", quality.EfficientNetLite0().eval(), "", "", torch.device("cpu"))
    fa, fr = effnet.features(rgb), rand.features(rgb)
    assert fa.shape == (2, 1280)
    assert np.linalg.norm(fa - fr) > 0.5 * np.linalg.norm(fa)


# -- Inception (FID) ---------------------------------------------------------------------------
def _layout_sha(sd):
    lines = "\n".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in sd.items())
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory):
    """A randomly initialised state dict in pytorch-fid's key layout, saved like its file."""
    torch.manual_seed(0)
    net = quality.FIDInceptionV3()
    sd = net.state_dict()
    assert len(sd) == 566 and _layout_sha(sd) == FID_LAYOUT_SHA256
    with torch.no_grad():
        for k, v in sd.items():
            # He-scaled convolutions so that a random signal survives 40-odd layers
            if k.endswith("conv.weight"):
                torch.nn.init.kaiming_normal_(v, nonlinearity="relu")
            elif k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith("running_mean") or k.endswith(".bias"):
                v.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("fid") / quality.INCEPTION_FILE
    torch.save(sd, path)
    return path


def test_inception_layout_and_features(random_inception_file):
    sd = torch.load(random_inception_file, weights_only=True)
    assert tuple(sd["fc.weight"].shape) == (1008, 2048)
    assert tuple(sd["Mixed_7c.branch_pool.conv.weight"].shape) == (192, 2048, 1, 1)
    assert tuple(sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    bb = quality.load_backbone("inception", inception_weights=random_inception_file)
    assert bb.metric == "FID" and bb.feature_dim == 2048
    assert all(torch.equal(bb.net.state_dict()[k], v) for k, v in sd.items())
    # input path: any size goes to 299 x 299 and [0, 1] goes to [-1, 1]
    x = torch.zeros(1, 3, 32, 32)
    x[..., 16:] = 1.0
    x = bb._prepare(x)
    assert x.shape == (1, 3, 299, 299) and float(x.min()) == pytest.approx(-1) and float(x.max()) == pytest.approx(1)
    rng = np.random.default_rng(0)
    f = bb.features(rng.random((2, 3, 64, 64), dtype=np.float32))
    assert f.shape == (2, 2048) and np.all(np.isfinite(f)) and not np.allclose(f[0], f[1])


def test_inception_file_without_batch_counters_loads(random_inception_file, tmp_path):
    sd = torch.load(random_inception_file, weights_only=True)
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(old, path)
    quality.load_backbone("inception", inception_weights=path)
    del old["Mixed_5b.branch1x1.conv.weight"]
    torch.save(old, path)
    with pytest.raises(CellgenError, match="Mixed_5b.branch1x1.conv.weight"):
        quality.load_backbone("inception", inception_weights=path)


def test_missing_inception_weights_one_line(tiny_sets, tmp_path):
    a, b = tiny_sets
    err = one_line_error(run("eval", "quality", "--generated", str(a), "--reference", str(b), "--backbone",
                             "inception", "--inception-weights", "nowhere/pt.pth", "-o", str(tmp_path / "q")))
    assert "nowhere/pt.pth" in err and quality.INCEPTION_FILE in err
    err = one_line_error(run("eval", "quality", "--generated", str(a), "--reference", str(b), "--backbone",
                             "inception", "-o", str(tmp_path / "q")))
    assert "--inception-weights" in err and quality.INCEPTION_FILE in err


# -- sets and CLI ------------------------------------------------------------------------------
def test_quality_report_per_tier(tiny_sets, effnet):
    a, b = tiny_sets
    same = quality.quality_report(a, a, backbone=effnet)
    assert same["metric"] == "FD-EffNetLite0" and same["comparable_with_inception_fid"] is False
    assert same["results"]["images"]["all"]["fd"] == pytest.approx(0.0, abs=1e-6)
    assert same["results"]["masks"]["all"]["fd"] == pytest.approx(0.0, abs=1e-6)
    other = quality.quality_report(a, b, backbone=effnet)
    for kind in ("images", "masks"):
        per = other["results"][kind]
        assert set(per) == {"all", "low", "medium", "high"}
        assert per["all"]["fd"] > 0
        assert sum(per[t]["n_generated"] for t in ("low", "medium", "high")) == 8
    # half the images: the same evenly spaced ones on both sides, so identical sets stay at 0
    half = quality.quality_report(a, a, backbone=effnet, what=["masks"], max_images=4)
    assert list(half["results"]) == ["masks"]
    assert half["results"]["masks"]["all"]["n_generated"] == 4
    assert half["results"]["masks"]["all"]["fd"] == pytest.approx(0.0, abs=1e-6)


def test_darker_images_move_further(tiny_sets, effnet, tmp_path):
    # the same masks with dimmer images: the image distance grows, the mask distance stays 0
    import h5py

    a, _ = tiny_sets
    dim = tmp_path / "dim.h5"
    dim.write_bytes(a.read_bytes())
    with h5py.File(dim, "r+") as f:
        f["images"][...] = (f["images"][()] // 3).astype(np.uint16)
    r = quality.quality_report(dim, a, backbone=effnet)
    assert r["results"]["images"]["all"]["fd"] > 1.0
    assert r["results"]["masks"]["all"]["fd"] == pytest.approx(0.0, abs=1e-6)


def test_cli_quality_smoke(tiny_sets, tmp_path):
    a, b = tiny_sets
    out = tmp_path / "q"
    result = run("eval", "quality", "--generated", str(a), "--reference", str(b), "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "quality.json").read_text())
    assert data["metric"] == "FD-EffNetLite0" and data["backbone"] == "efficientnet-lite0"
    assert set(data["results"]) == {"images", "masks"}
    assert data["results"]["images"]["all"]["fd"] > 0
    assert "FD-EffNetLite0" in result.stdout and "high" in result.stdout
    # same command, same bytes
    again = run("eval", "quality", "--generated", str(a), "--reference", str(b), "-o", str(tmp_path / "r"), "-q")
    assert again.returncode == 0
    assert (tmp_path / "r" / "quality.json").read_bytes() == (out / "quality.json").read_bytes()
