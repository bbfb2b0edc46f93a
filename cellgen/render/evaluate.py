"""Rendering fidelity, as in the reference paper's Table 3 (segment rendered images).

Protocol of :func:`evaluate_renderer`:

1. Train a small U-Net segmenter (:class:`UNet`, ours) on REAL training pairs (real image
   -> 3-class semantic map: background, nucleus, cytoplasm), seeded, random crops / flips.
2. Render images from masks with the renderer: from the held-out masks (``rendered``) and
   from the segmenter's own training masks (``rendered_train``), then segment them and score
   the prediction against the masks the images were rendered from.
3. Segment the REAL held-out images too: the ceiling (``real``) that perfect rendering
   would reach.

Scores are the pixel metrics of :mod:`cellgen.bench.metrics` (aAcc, mIoU, mAcc, mDice,
mFscore, mPrecision, mRecall; fractions in [0, 1], pooled over images), for two
foregrounds: ``cell`` (nucleus + cytoplasm vs background, the headline numbers) and
``nucleus`` (nucleus vs the rest). The paper's Pix2PixHD row (percent) is kept under
``reference`` for comparison: aAcc 95.16, mIoU 88.27, mAcc 94.44, mDice 93.72, mPrecision
93.04, mRecall 94.44.

Also per-channel intensity statistics (mean, std) of rendered vs real images inside
nuclei, inside cytoplasm (cell minus nucleus) and in the background, on the held-out masks,
and their texture (:mod:`cellgen.render.texture`: checkerboard amplitude, background
standard deviation, per-cell mean intensities, radially averaged power spectrum) with the
ratios rendered / real. A renderer whose output depends on a seed renders the held-out
masks a second time with other seeds: ``seed_variation`` says how much the images and the
cells' mean intensities change.

Held-out data: ``heldout`` (a second set / folder) when given, else the last
``holdout_fraction`` of ``data`` (which the renderer may have been trained on; the result
says which).

Public API: :func:`evaluate_renderer`, :class:`UNet`, :func:`train_segmenter`,
:func:`segment`, :data:`PAPER_PIX2PIXHD`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from cellgen.bench.metrics import pixel_metrics, pixel_totals, pool_pixel_totals
from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path
from cellgen.render.data import open_pairs
from cellgen.render import texture
from cellgen.render.renderer import resolve_device

#: the paper's Table 3 Pix2PixHD row, as fractions
PAPER_PIX2PIXHD = {"aAcc": 0.9516, "mIoU": 0.8827, "mAcc": 0.9444, "mDice": 0.9372, "mPrecision": 0.9304,
                   "mRecall": 0.9444}
METRIC_KEYS = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall")
REGIONS = ("nucleus", "cytoplasm", "background")
CHANNELS = ("nucleus", "cytoplasm")


# ----------------------------------------------------------------------------- segmenter


def _block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True))


class UNet(nn.Module):
    """A small U-Net: ``widths`` per level (default 8, 16, 32), max-pool down, transposed-conv up."""

    def __init__(self, in_ch: int = 2, n_classes: int = 3, widths=(8, 16, 32)):
        super().__init__()
        self.widths = tuple(widths)
        self.down = nn.ModuleList()
        c = in_ch
        for w in self.widths:
            self.down.append(_block(c, w))
            c = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(self.widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.merge.append(_block(2 * w, w))
            c = w
        self.head = nn.Conv2d(c, n_classes, 1)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x):
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


def _classes(semantic: np.ndarray) -> np.ndarray:
    """0 / 128 / 255 -> 0 background, 1 nucleus, 2 cytoplasm."""
    out = np.zeros(semantic.shape, np.int64)
    out[semantic == 128] = 1
    out[semantic == 255] = 2
    return out


def train_segmenter(images: np.ndarray, semantics: np.ndarray, *, steps: int = 300, batch: int = 8,
                    crop: int = 128, lr: float = 1e-3, seed: int = 0, device="cpu", widths=(8, 16, 32),
                    progress: bool = False) -> UNet:
    """Train :class:`UNet` on (N, 2, H, W) [0, 1] images and (N, H, W) semantic maps; returns it in eval mode."""
    dev = resolve_device(device)
    torch.manual_seed(seed)
    net = UNet(images.shape[1], 3, widths).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n, _, h, w = images.shape
    ch, cw = min(crop, h) // net.factor * net.factor, min(crop, w) // net.factor * net.factor
    if ch == 0 or cw == 0:
        raise CellgenError(f"images of {h}x{w} are too small for the segmenter")
    labels = _classes(semantics)
    net.train()
    for step in tqdm(range(steps), desc="training segmenter", unit="step", disable=not progress):
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, n, size=batch)
        xs, ys = [], []
        for i in idx:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            x = images[i, :, y0:y0 + ch, x0:x0 + cw]
            y = labels[i, y0:y0 + ch, x0:x0 + cw]
            k = int(rng.integers(0, 4)) if ch == cw else 0
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
            if rng.integers(0, 2):
                x, y = x[..., ::-1], y[..., ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        x = torch.from_numpy(np.stack(xs)).float().to(dev)
        y = torch.from_numpy(np.stack(ys)).to(dev)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def segment(net: UNet, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """(N, H, W) class maps (0 background, 1 nucleus, 2 cytoplasm) of (N, 2, H, W) images."""
    dev = next(net.parameters()).device
    n, _, h, w = images.shape
    f = net.factor
    ph, pw = (-h) % f, (-w) % f
    out = np.empty((n, h, w), np.int64)
    with torch.inference_mode():
        for s in range(0, n, batch):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch])).float().to(dev)
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="reflect")
            out[s:s + batch] = net(x)[..., :h, :w].argmax(1).cpu().numpy()
    return out


# ----------------------------------------------------------------------------- scoring


def _score(pred: np.ndarray, semantics: np.ndarray) -> dict:
    """Pooled pixel metrics for the cell and the nucleus foreground."""
    res = {}
    for name, true_fg, pred_fg in (("cell", semantics > 0, pred > 0), ("nucleus", semantics == 128, pred == 1)):
        tot = pool_pixel_totals([pixel_totals(t.astype(np.uint8), p.astype(np.uint8)) for t, p in zip(true_fg, pred_fg)])
        m = pixel_metrics(tot)
        res[name] = {k: float(m[k]) for k in METRIC_KEYS}
    return res


def intensity_stats(images: np.ndarray, semantics: np.ndarray, cells: np.ndarray) -> dict:
    """{channel: {region: {mean, std, n_pixels}}} of (N, 2, H, W) [0, 1] images."""
    regions = {"nucleus": semantics == 128, "cytoplasm": semantics == 255, "background": cells == 0}
    out = {}
    for c, cname in enumerate(CHANNELS):
        out[cname] = {}
        for rname, sel in regions.items():
            v = images[:, c][sel]
            out[cname][rname] = {"mean": float(v.mean()) if v.size else math.nan,
                                 "std": float(v.std()) if v.size else math.nan, "n_pixels": int(v.size)}
    return out


def _load_all(source, indices):
    pairs = [source.get(int(i)) for i in indices]
    return (np.stack([p.image for p in pairs]).astype(np.float32), np.stack([p.semantic for p in pairs]),
            np.stack([p.cell for p in pairs]), np.stack([p.nucleus for p in pairs]))


def _figure(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    keys = [k for k in METRIC_KEYS if k != "mFscore"]
    rows = [("real held-out", result["real"]["cell"]), ("rendered held-out", result["rendered"]["cell"])]
    if result.get("rendered_train"):
        rows.append(("rendered train", result["rendered_train"]["cell"]))
    rows.append(("paper Pix2PixHD", result["reference"]["paper_pix2pixhd"]))
    x = np.arange(len(keys))
    wbar = 0.8 / len(rows)
    for j, (label, vals) in enumerate(rows):
        axes[0].bar(x + j * wbar, [vals.get(k, np.nan) for k in keys], wbar, label=label)
    axes[0].set_xticks(x + 0.4 - wbar / 2, keys, rotation=30)
    axes[0].set_ylim(0, 1)
    axes[0].set_title("U-Net on rendered vs real (cell foreground)")
    axes[0].legend(fontsize=7, loc="lower left")
    for ax, ch in zip(axes[1:], CHANNELS):
        for j, (label, key) in enumerate((("real", "real"), ("rendered", "rendered"))):
            st = result["intensity"][key][ch]
            ax.bar(np.arange(3) + j * 0.4, [st[r]["mean"] for r in REGIONS], 0.4,
                   yerr=[st[r]["std"] for r in REGIONS], label=label, capsize=3)
        ax.set_xticks(np.arange(3) + 0.2, REGIONS)
        ax.set_title(f"{ch} channel intensity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _texture(renderer, rendered, images, semantic, cell, nucleus) -> dict:
    real_s, rend_s = texture.image_statistics(images, semantic, cell), texture.image_statistics(rendered, semantic, cell)
    out = {"real": texture.public(real_s), "rendered": texture.public(rend_s),
           "ratio": texture.compare(rend_s, real_s, paired=True)}
    if renderer.varies:
        again = renderer.render_batch(semantic, cell, nucleus, seeds=range(len(semantic), 2 * len(semantic)))
        a, b = rend_s["_cell_means_raw"], texture.cell_means(again, semantic, cell)
        out["seed_variation"] = {
            "mean_abs_pixel_difference": float(np.abs(rendered - again).mean()),
            # 1: a cell's brightness is fixed by the mask; 0: drawn anew with each seed
            "cell_mean_correlation": {k: float(np.corrcoef(a[k], b[k])[0, 1]) if len(a[k]) > 1 else math.nan
                                      for k in a},
        }
    return out


def evaluate_renderer(renderer, data, *, heldout=None, holdout_fraction: float = 0.25, max_images: int = 64,
                      segmenter_steps: int = 300, segmenter_batch: int = 8, segmenter_crop: int = 128,
                      segmenter_widths=(8, 16, 32), seed: int = 0, device=None, out_dir=None,
                      progress: bool = False) -> dict:
    """Table-3 style fidelity of ``renderer`` (a :class:`~cellgen.render.renderer.Renderer` or a checkpoint path).

    ``data``: the renderer's real training pairs (set file or export folder); ``heldout``:
    separate real pairs for testing (default: the last ``holdout_fraction`` of ``data``).
    At most ``max_images`` images are used per role. With ``out_dir``, writes
    ``render_eval.json`` and ``render_eval.png`` there. Returns the result dict (see module doc).
    """
    from cellgen.render.renderer import Renderer

    t0 = time.time()
    if not isinstance(renderer, Renderer):
        renderer = Renderer.load(renderer, device or "cpu")
    dev = resolve_device(device) if device is not None else renderer.device
    src = open_pairs(data)
    held_src = open_pairs(heldout) if heldout is not None else None
    try:
        n = len(src)
        if held_src is None:
            n_test = max(1, int(round(n * holdout_fraction)))
            if n - n_test < 1:
                raise CellgenError(f"{data} has {n} images: too few to hold {n_test} out for testing")
            train_idx, test_idx = np.arange(n - n_test), np.arange(n - n_test, n)
            test_src, split = src, f"last {n_test} of {n} images of the training data held out"
        else:
            train_idx, test_idx = np.arange(n), np.arange(len(held_src))
            test_src, split = held_src, "separate held-out data"
        train_idx, test_idx = train_idx[:max_images], test_idx[:max_images]
        tr_img, tr_sem, tr_cell, tr_nuc = _load_all(src, train_idx)
        te_img, te_sem, te_cell, te_nuc = _load_all(test_src, test_idx)
    finally:
        src.close()
        if held_src is not None:
            held_src.close()

    net = train_segmenter(tr_img, tr_sem, steps=segmenter_steps, batch=segmenter_batch, crop=segmenter_crop,
                          seed=seed, device=dev, widths=segmenter_widths, progress=progress)
    rendered = renderer.render_batch(te_sem, te_cell, te_nuc, seeds=range(len(te_sem)))
    rendered_train = renderer.render_batch(tr_sem, tr_cell, tr_nuc)
    result = {
        "real": _score(segment(net, te_img), te_sem),
        "rendered": _score(segment(net, rendered), te_sem),
        "rendered_train": _score(segment(net, rendered_train), tr_sem),
        "segmenter_on_train": _score(segment(net, tr_img), tr_sem),
        "intensity": {"real": intensity_stats(te_img, te_sem, te_cell),
                      "rendered": intensity_stats(rendered, te_sem, te_cell)},
        "texture": _texture(renderer, rendered, te_img, te_sem, te_cell, te_nuc),
        "reference": {"paper_pix2pixhd": dict(PAPER_PIX2PIXHD)},
        "setup": {"data": str(data), "heldout": str(heldout) if heldout is not None else None, "split": split,
                  "n_train": int(len(train_idx)), "n_test": int(len(test_idx)), "segmenter_steps": segmenter_steps,
                  "segmenter_widths": list(segmenter_widths), "seed": seed, "renderer_sha256": renderer.sha256,
                  "renderer_preset": renderer.config.get("preset"), "foregrounds": ["cell", "nucleus"],
                  "wall_s": None},
    }
    result["setup"]["wall_s"] = round(time.time() - t0, 2)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "render_eval.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2, sort_keys=True, allow_nan=True))
        _figure(out / "render_eval.png", result)
    return result
