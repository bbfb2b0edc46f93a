"""Train the contour generator (StyleGAN2 on 4-class label maps), resumable, on CPU or CUDA.

>>> train_contours("train.h5", "runs/contours", ContourTrainingConfig(preset="small256", kimg=5, batch=8))

**Data.** An HDF5 benchmark set (its exact masks) or a folder as ``cellgen export`` writes
it (``masks/cell/NNNNN.tif|png`` and ``masks/nucleus/NNNNN.*``; the folder itself or its
``masks`` sub-folder). Each image is centre-cropped to a square (the shorter side) and its
*instance maps* are resized to the preset resolution by nearest neighbour; the 4-class label
map (background, cytoplasm, nucleus, boundary) is then derived at the target resolution with
:func:`cellgen.masks.label_map_from_instances`, so boundary ribbons stay one pixel wide
and touching cells stay separable. Class maps are kept in memory as uint8 and fed to D
one-hot, scaled to {-1, +1}.

**Objective** (as stylegan2-ada-pytorch ``StyleGAN2Loss``, in its phases Gmain, Greg, Dmain,
Dreg): non-saturating logistic loss, with D seeing reals as one-hot maps scaled to {-1, +1}
and fakes as ``2 softmax(G scores) - 1`` (training option ``d_input="softmax"``, the default;
``"raw"`` feeds the raw scores, as for images: D then wins on the value range alone, since G
cannot output exact one-hot values, and early training turns to per-pixel speckle); lazy R1 on reals every 16 steps (``r1_gamma``, loss
scaled by the interval); optional path-length regularisation every 4 steps (``pl_weight``,
batch shrink 2, decay 0.01); lazy-regularisation-corrected Adam (betas 0, 0.99, eps 1e-8);
optional style mixing; EMA generator with half-life ``ema_kimg`` (optionally ramped up by
``ema_rampup``). **Augmentation** (``augment``: ``"ada"``, ``"none"`` or a fixed probability)
applies x-flip, 90-degree rotations and integer translations (up to 1/8 of the size,
reflect-padded) to everything D sees, each with probability p per image; with ``"ada"``
p is adjusted every 4 steps by ``sign(E[sign D(real)] - 0.6) * batch * 4 / (ada_kimg * 1000)``.

**Outputs** in ``out_dir``: ``snapshot.pt`` (kind ``contour-training``: G, D, G_ema,
optimiser states, step, augment p, RNG state; written atomically every tick, a rerun of the
same command continues from it), ``log.jsonl`` (one line per tick: step, kimg, loss_G,
loss_D, r1, pl, augment_p, seconds), ``samples_STEP.png`` (fixed seeds, G_ema, psi 1,
argmax classes coloured; the latest ``keep_samples`` kept), with ``export_every_kimg``
``generators/generator-STEP.pt`` (the EMA generator every that many kimg, all kept, for
``cellgen eval contours`` to rank: the snapshot is overwritten every tick) and, at the end,
``generator.pt`` (kind ``contour-generator``: G_ema weights incl. ``w_avg`` + config; info:
data, steps, kimg, wall time, device).

On CPU the run is deterministic for a fixed seed (one RNG stream, saved in snapshots, so a
resumed run draws what an uninterrupted one would). Mixed precision (bfloat16 autocast for
the main loss phases) is used only on CUDA.

Public API: :func:`train_contours`, :class:`ContourTrainingConfig`, :func:`load_training_data`, :func:`augment_batch`, :data:`SNAPSHOT_KIND`.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cellgen.checkpoint import load_checkpoint, load_into, save_checkpoint
from cellgen.errors import CellgenError
from cellgen.datasets.h5 import pixel_size_of
from cellgen.fileio import atomic_path
from cellgen.gen.generator import KIND as GENERATOR_KIND
from cellgen.gen.generator import resolve_device
from cellgen.gen.networks import Discriminator, Generator, preset_config, z_from_seed
from cellgen.masks import label_map_from_instances
from cellgen.runs import append_log, changed_options, load_snapshot, out_of_time, trim_log

SNAPSHOT_KIND = "contour-training"
N_CLASSES = 4
# argmax colours: background black, cytoplasm green, nucleus blue, boundary white
CLASS_COLOURS = np.array([[0, 0, 0], [40, 180, 60], [60, 90, 255], [255, 255, 255]], np.uint8)


# --------------------------------------------------------------------------------------
# data


def _fit(cell: np.ndarray, nucleus: np.ndarray, res: int) -> np.ndarray:
    """Centre-crop to a square, nearest-neighbour resize of instance ids, label map at ``res``."""
    h, w = cell.shape
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    cell, nucleus = cell[y0:y0 + s, x0:x0 + s], nucleus[y0:y0 + s, x0:x0 + s]
    if s != res:
        idx = np.minimum(((np.arange(res) + 0.5) * s / res).astype(np.int64), s - 1)
        cell, nucleus = cell[np.ix_(idx, idx)], nucleus[np.ix_(idx, idx)]
    return label_map_from_instances(cell, nucleus)


def load_training_data(data, resolution: int) -> np.ndarray:
    """(N, R, R) uint8 class maps from an HDF5 set or an exported mask folder."""
    path = Path(data)
    if not path.exists():
        raise CellgenError(f"no such training data: {path}")
    maps = []
    if path.is_file():
        from cellgen.datasets.h5 import BenchmarkSet

        with BenchmarkSet(path) as ds:
            for i in range(len(ds)):
                m = ds.masks(i)
                maps.append(_fit(m.cell, m.nucleus, resolution))
    else:
        from cellgen.datasets.export import read_label_file

        root = path / "masks" if (path / "masks" / "cell").is_dir() else path
        cell_dir, nuc_dir = root / "cell", root / "nucleus"
        if not cell_dir.is_dir() or not nuc_dir.is_dir():
            raise CellgenError(f"{path} has no masks/cell and masks/nucleus folders (as `cellgen export` writes)")
        files = sorted(p for p in cell_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png"))
        for f in files:
            partners = [nuc_dir / (f.stem + ext) for ext in (f.suffix, ".tif", ".tiff", ".png")]
            partner = next((p for p in partners if p.exists()), None)
            if partner is None:
                raise CellgenError(f"{f} has no nucleus mask {nuc_dir / f.stem}.*")
            cell, nucleus = read_label_file(f), read_label_file(partner)
            if cell.shape != nucleus.shape:
                raise CellgenError(f"{f} and {partner} differ in shape: {cell.shape} vs {nucleus.shape}")
            maps.append(_fit(cell, nucleus, resolution))
    if not maps:
        raise CellgenError(f"{path} holds no masks to train on")
    return np.stack(maps).astype(np.uint8)


def _to_input(classes: torch.Tensor) -> torch.Tensor:
    """uint8 (N, R, R) class maps -> (N, 4, R, R) one-hot scaled to {-1, +1}."""
    return F.one_hot(classes.long(), N_CLASSES).permute(0, 3, 1, 2).float() * 2 - 1


# --------------------------------------------------------------------------------------
# augmentation


def augment_batch(x: torch.Tensor, p: float) -> torch.Tensor:
    """x-flip, rotation by k*90 degrees, integer translation (reflect), each with probability p.

    Vectorised over the batch and differentiable (G's gradients pass through it).
    """
    if p <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    flip = (torch.rand(n, device=dev) < p).view(n, 1, 1, 1)
    x = torch.where(flip, x.flip(3), x)
    if h == w:
        k = torch.randint(0, 4, (n,), device=dev) * (torch.rand(n, device=dev) < p)
        rots = torch.stack([x] + [x.rot90(j, dims=(2, 3)) for j in (1, 2, 3)])
        x = rots[k, torch.arange(n, device=dev)]
    m = max(1, round(min(h, w) * 0.125))
    shift = torch.randint(-m, m + 1, (n, 2), device=dev) * (torch.rand(n, 1, device=dev) < p)

    def reflect(idx, size):
        idx = idx.abs()
        return torch.where(idx > size - 1, 2 * (size - 1) - idx, idx)

    rows = reflect(torch.arange(h, device=dev)[None] - shift[:, :1], h)
    cols = reflect(torch.arange(w, device=dev)[None] - shift[:, 1:], w)
    x = x[torch.arange(n, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return x.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------
# helpers


def _colour(scores: np.ndarray) -> np.ndarray:
    return CLASS_COLOURS[np.argmax(scores, axis=0)]


def _write_grid(path: Path, scores: np.ndarray):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image as mpimg

    n = len(scores)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    r = scores.shape[-1]
    grid = np.zeros((rows * (r + 2), cols * (r + 2), 3), np.uint8) + 128
    for i, s in enumerate(scores):
        y, x = divmod(i, cols)
        grid[y * (r + 2) + 1: y * (r + 2) + 1 + r, x * (r + 2) + 1: x * (r + 2) + 1 + r] = _colour(s)
    with atomic_path(path) as tmp:
        mpimg.imsave(tmp, grid, format="png")


def _load_init(path, cfg: dict, preset: str) -> dict:
    """Weights to continue from: a ``contour-generator`` checkpoint (G; D starts fresh) or a
    contour training snapshot (G, D and G_ema, and its augmentation probability)."""
    ck = load_checkpoint(path)
    kind = ck.get("kind")
    if kind == SNAPSHOT_KIND:
        model = ck["config"]["model"]
    elif kind == GENERATOR_KIND:
        model = {k: v for k, v in ck["config"].items() if k != "training"}
    else:
        raise CellgenError(f"{path} holds a '{kind}' checkpoint; continue from a '{GENERATOR_KIND}' checkpoint or "
                           f"a '{SNAPSHOT_KIND}' snapshot (a run folder's snapshot.pt)")
    want = {k: v for k, v in cfg.items() if k != "training"}
    if model != want:
        differ = ", ".join(f"{k} {model.get(k)} (here {want.get(k)})" for k in sorted(set(model) | set(want))
                           if model.get(k) != want.get(k))
        raise CellgenError(f"{path} is not a '{preset}' generator as configured here: {differ}")
    if kind == GENERATOR_KIND:
        return {"G": ck["state_dict"], "augment_p": None}
    return {"nets": ck["state_dict"], "augment_p": float(ck["extra"]["augment_p"])}


class _Nets(torch.nn.Module):
    def __init__(self, G, D, G_ema):
        super().__init__()
        self.G, self.D, self.G_ema = G, D, G_ema


def _lazy_adam(params, lr, interval):
    ratio = interval / (interval + 1) if interval else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)


# --------------------------------------------------------------------------------------
# training


def _generator_loss_step(G, D, opt_G, run_G, run_D, batch, zdim, dev, autocast, d_only) -> float:
    """Gmain: the non-saturating logistic loss of fakes; G steps unless D is warming up alone."""
    D.requires_grad_(False)
    G.requires_grad_(True)
    opt_G.zero_grad(set_to_none=True)
    with autocast(), torch.set_grad_enabled(not d_only):
        fake, _ = run_G(torch.randn(batch, zdim, device=dev), update=not d_only)
        loss_G = F.softplus(-run_D(fake, fake=True)).mean()
    if not d_only:
        loss_G.backward()
        opt_G.step()
    return float(loss_G.detach())


def _path_length_step(opt_G, run_G, batch, zdim, dev, pl_mean, pl_weight, pl_interval):
    """Greg: lazy path-length regularisation; returns the mean penalty and the updated running mean."""
    opt_G.zero_grad(set_to_none=True)
    n = max(batch // 2, 1)
    img, ws = run_G(torch.randn(n, zdim, device=dev))
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = grads.square().sum(2).mean(1).sqrt()
    pl_mean = pl_mean.lerp(lengths.mean().detach(), 0.01)
    loss_pl = (lengths - pl_mean).square() * pl_weight
    (img[:, 0, 0, 0] * 0 + loss_pl).mean().mul(pl_interval).backward()
    opt_G.step()
    return float(loss_pl.detach().mean()), pl_mean


def _discriminator_loss_step(G, D, opt_D, run_G, run_D, real, batch, zdim, dev, autocast, d_only):
    """Dmain: the logistic loss on fakes and reals; returns it and D's (detached) logits on the reals."""
    G.requires_grad_(False)
    D.requires_grad_(True)
    opt_D.zero_grad(set_to_none=True)
    with autocast():
        with torch.no_grad():
            fake, _ = run_G(torch.randn(batch, zdim, device=dev), update=not d_only)
        fake_logits = run_D(fake, fake=True)
        real_logits = run_D(real)
        loss_D = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    loss_D.backward()
    opt_D.step()
    return float(loss_D.detach()), real_logits.detach()


def _r1_step(opt_D, run_D, real, r1_gamma, r1_interval) -> float:
    """Dreg: lazy R1 gradient penalty on the reals; returns its mean."""
    opt_D.zero_grad(set_to_none=True)
    real_r = real.detach().requires_grad_(True)
    logits = run_D(real_r)
    (grads,) = torch.autograd.grad(logits.sum(), real_r, create_graph=True)
    r1 = grads.square().sum([1, 2, 3])
    (r1 * (r1_gamma / 2) + logits[:, 0] * 0).mean().mul(r1_interval).backward()
    opt_D.step()
    return float(r1.detach().mean())


@dataclass(frozen=True)
class ContourTrainingConfig:
    """What decides a contour training run's result (and how often it records itself).

    Give exactly one of ``kimg`` (thousands of real images shown) or ``steps``.
    Hyper-parameters left ``None`` come from the preset's ``training`` section.
    ``dihedral`` shows each real map in a random one of its 8 flips/rotations: cell layouts
    have no preferred orientation, so this multiplies the data by 8 without changing the
    distribution G must learn (unlike ``augment``, which D sees on fakes too).
    ``init`` continues training in a new run, for example on other data. From a
    ``contour-generator`` checkpoint of the same preset, G and G_ema start from its weights and
    ``w_avg`` and D starts fresh, so ``d_warmup_kimg`` trains D alone first, G frozen, lest a
    random D's gradients undo what G learned (a fresh D has been seen to lose to the trained G
    at once and stay at chance). From a training snapshot (``snapshot.pt`` of a run folder) G,
    D and G_ema all carry on, and ADA from the snapshot's probability. Either way the EMA
    starts without ramp-up, from the loaded weights.
    ``tick_steps``, ``sample_seeds``, ``keep_samples`` and ``export_every_kimg`` only set what
    the run folder records: ``export_every_kimg`` keeps the EMA generator at the first tick past
    every multiple of that many kimg (``generators/generator-STEP.pt``), to pick the best.
    """

    preset: str = "small256"
    kimg: float | None = None
    steps: int | None = None
    batch: int | None = None
    seed: int = 0
    augment: str | float = "ada"
    dihedral: bool = True
    r1_gamma: float | None = None
    pl_weight: float | None = None
    lr: float | None = None
    ema_kimg: float | None = None
    style_mixing_prob: float | None = None
    ada_target: float = 0.6
    ada_kimg: float | None = None
    r1_interval: int = 16
    pl_interval: int = 4
    config_overrides: dict | None = None
    init: str | Path | None = None
    d_warmup_kimg: float = 0.0
    tick_steps: int | None = None
    sample_seeds: tuple = tuple(range(16))
    keep_samples: int = 3
    export_every_kimg: float | None = None


def train_contours(data, out_dir, config: ContourTrainingConfig | None = None, *, device: str = "cpu",
                   progress: bool = True, max_minutes: float | None = None, resume: bool = True, log=None,
                   **options) -> Path:
    """Train (or resume) and return the path of ``out_dir/generator.pt``.

    ``config`` (default :class:`ContourTrainingConfig`) says what to train; keyword
    ``options`` replace single fields of it (``train_contours(data, out, steps=10)``).
    ``log`` is an optional callable receiving each tick's log dict (after it is written and
    snapshotted). ``max_minutes`` stops after the first tick past that wall time (snapshot
    written; the return value is then the snapshot's path); rerunning the same call resumes.
    """
    config = replace(config or ContourTrainingConfig(), **options)
    return _train(data, out_dir, device=device, progress=progress, max_minutes=max_minutes, resume=resume, log=log,
                  **{f.name: getattr(config, f.name) for f in fields(config)})


def _train(data, out_dir, *, device, progress, max_minutes, resume, log, preset, kimg, steps, batch, seed, augment,
           dihedral, r1_gamma, pl_weight, lr, ema_kimg, style_mixing_prob, ada_target, ada_kimg, r1_interval,
           pl_interval, config_overrides, init, d_warmup_kimg, tick_steps, sample_seeds, keep_samples,
           export_every_kimg) -> Path:
    t_start = time.time()
    dev = resolve_device(device)
    cfg = preset_config(preset, **(config_overrides or {}))
    tr = dict(cfg["training"])
    for key, val in (("batch", batch), ("r1_gamma", r1_gamma), ("pl_weight", pl_weight), ("lr", lr),
                     ("ema_kimg", ema_kimg), ("style_mixing_prob", style_mixing_prob), ("ada_kimg", ada_kimg)):
        if val is not None:
            tr[key] = val
    batch = int(tr["batch"])
    if batch < 1:
        raise CellgenError(f"--batch must be positive, got {batch}")
    group = cfg["mbstd_group_size"]
    if group and batch % min(group, batch):
        raise CellgenError(f"--batch {batch} must be a multiple of the minibatch-stddev group size {group}")
    if (kimg is None) == (steps is None):
        raise CellgenError("give exactly one of --kimg or --steps")
    total = int(steps) if steps is not None else math.ceil(float(kimg) * 1000 / batch)
    if total < 1:
        raise CellgenError("nothing to train: --kimg/--steps must be positive")
    if isinstance(augment, str) and augment not in ("ada", "none"):
        try:
            augment = float(augment)
        except ValueError:
            raise CellgenError(f"--augment must be ada, none or a probability, got {augment!r}") from None
    adaptive = augment == "ada"
    p_fixed = 0.0 if augment in ("ada", "none") else float(augment)
    if not 0 <= p_fixed <= 1:
        raise CellgenError(f"augmentation probability must lie in [0, 1], got {p_fixed}")
    if tick_steps is None:
        tick_steps = max(1, min(total, round(1000 / batch)))  # about one kimg per tick
    if export_every_kimg is not None and not float(export_every_kimg) > 0:
        raise CellgenError(f"--export-every must be a positive number of kimg, got {export_every_kimg}")
    run = {"preset": preset, "batch": batch, "seed": int(seed), "augment": str(augment), "data": str(data),
           "dihedral": bool(dihedral)}
    warmup_steps = max(0, math.ceil(float(d_warmup_kimg) * 1000 / batch))
    if init is not None:
        run.update(init=str(init), d_warmup_steps=warmup_steps)
    cfg["training"] = tr

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snap_path, log_path = out_dir / "snapshot.pt", out_dir / "log.jsonl"

    res = int(cfg["resolution"])
    maps = load_training_data(data, res)
    # the data as trained on, whatever its path: a resumed run must see the same maps
    run["data_sha256"] = hashlib.sha256(np.ascontiguousarray(maps).tobytes()).hexdigest()
    classes = torch.from_numpy(maps)
    torch.manual_seed(int(seed))
    G, D = Generator(cfg), Discriminator(cfg)
    G_ema = Generator(cfg).eval().requires_grad_(False)
    start = _load_init(init, cfg, preset) if init is not None else None
    if start is not None and "G" in start:
        load_into(G, start["G"], source=str(init))
    G_ema.load_state_dict(G.state_dict())
    nets = _Nets(G, D, G_ema).to(dev)
    if start is not None and "nets" in start:
        load_into(nets, start["nets"], source=str(init))
    opt_G = _lazy_adam(G.parameters(), tr["lr"], pl_interval if tr["pl_weight"] > 0 else 0)
    opt_D = _lazy_adam(D.parameters(), tr["lr"], r1_interval)
    step, aug_p, pl_mean, wall_before = 0, p_fixed, torch.zeros([], device=dev), 0.0
    if start is not None and start["augment_p"] is not None and adaptive:
        aug_p = start["augment_p"]  # the snapshot's D was trained at this p; ADA goes on from there
    ada_acc = [0.0, 0]

    if resume and snap_path.exists():
        snap = load_snapshot(snap_path, SNAPSHOT_KIND)  # a stale sidecar is dropped and rewritten
        changed = _changed_options(snap["config"], {"model": {k: v for k, v in cfg.items() if k != "training"},
                                                    "training": tr, "run": run})
        if changed:
            raise CellgenError(f"{snap_path} belongs to a run with other {', '.join(changed)}; resume with the "
                               "same options, or use another output folder")
        load_into(nets, snap["state_dict"], source=str(snap_path))
        ex = snap["extra"]
        opt_G.load_state_dict(ex["opt_G"])
        opt_D.load_state_dict(ex["opt_D"])
        step, aug_p, wall_before = int(ex["step"]), float(ex["augment_p"]), float(ex["wall_s"])
        pl_mean = ex["pl_mean"].to(dev)
        ada_acc = [float(ex["ada_sum"]), int(ex["ada_n"])]
        torch.set_rng_state(ex["rng_cpu"])
        if dev.type == "cuda" and "rng_cuda" in ex:
            torch.cuda.set_rng_state(ex["rng_cuda"])
    trim_log(log_path, step, resume)

    amp = dev.type == "cuda"
    sample_z = torch.from_numpy(np.concatenate([z_from_seed(s, cfg["z_dim"]) for s in sample_seeds])).float().to(dev)
    n_data = len(classes)
    zdim = cfg["z_dim"]
    mix_p = float(tr.get("style_mixing_prob") or 0.0)
    d_input = tr.get("d_input", "softmax")
    if d_input not in ("softmax", "raw"):
        raise CellgenError(f"d_input must be softmax or raw, got {d_input!r}")

    def real_batch():
        idx = torch.randint(0, n_data, (batch,))
        maps = classes[idx]
        if dihedral:
            flip = torch.rand(batch) < 0.5
            maps = torch.where(flip[:, None, None], maps.flip(2), maps)
            k = torch.randint(0, 4, (batch,))
            maps = torch.stack([m.rot90(int(j), dims=(0, 1)) for m, j in zip(maps, k)])
        return _to_input(maps).to(dev)

    def run_G(z, update=True):
        ws = G.mapping(z, update_w_avg=update)
        if mix_p > 0:
            cutoff = int(torch.randint(1, ws.shape[1], ()))
            if float(torch.rand(())) < mix_p:
                ws = ws.clone()
                ws[:, cutoff:] = G.mapping(torch.randn_like(z), update_w_avg=False)[:, cutoff:]
        return G.synthesis(ws), ws

    def run_D(img, fake=False):
        if fake and d_input == "softmax":
            # reals are exact one-hot maps; D compares them with G's class probabilities, so a
            # confident G matches the reals' value range by scaling its scores, and D must judge shapes
            img = torch.softmax(img.float(), dim=1) * 2 - 1
        return D(augment_fn(img))

    def augment_fn(img):
        return augment_batch(img, aug_p) if aug_p > 0 else img

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp)

    def snapshot():
        extra = {"opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "step": step, "augment_p": aug_p,
                 "pl_mean": pl_mean.detach().cpu(), "ada_sum": ada_acc[0], "ada_n": ada_acc[1],
                 "wall_s": wall_before + time.time() - t_start, "rng_cpu": torch.get_rng_state()}
        if dev.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state()
        model_cfg = {k: v for k, v in cfg.items() if k != "training"}
        save_checkpoint(snap_path, SNAPSHOT_KIND, {"model": model_cfg, "training": tr, "run": run},
                        nets.state_dict(), extra, info={"step": step, "total_steps": total})

    sums = {"loss_G": 0.0, "loss_D": 0.0, "r1": 0.0, "pl": 0.0}
    counts = {"loss_G": 0, "loss_D": 0, "r1": 0, "pl": 0}
    tick_start = time.time()
    last_tick_nimg = step * batch
    bar = tqdm(total=total, initial=min(step, total), desc=f"training {preset}", unit="step", disable=not progress)
    G.train()
    D.train()
    while step < total:
        d_only = step < warmup_steps
        loss_G = _generator_loss_step(G, D, opt_G, run_G, run_D, batch, zdim, dev, autocast, d_only)
        sums["loss_G"] += loss_G
        counts["loss_G"] += 1
        if tr["pl_weight"] > 0 and step % pl_interval == 0 and not d_only:
            loss_pl, pl_mean = _path_length_step(opt_G, run_G, batch, zdim, dev, pl_mean, tr["pl_weight"], pl_interval)
            sums["pl"] += loss_pl
            counts["pl"] += 1
        real = real_batch()
        loss_D, real_logits = _discriminator_loss_step(G, D, opt_D, run_G, run_D, real, batch, zdim, dev, autocast,
                                                       d_only)
        sums["loss_D"] += loss_D
        counts["loss_D"] += 1
        ada_acc[0] += float(torch.sign(real_logits.float()).sum())
        ada_acc[1] += real_logits.numel()
        if tr["r1_gamma"] > 0 and step % r1_interval == 0:
            sums["r1"] += _r1_step(opt_D, run_D, real, tr["r1_gamma"], r1_interval)
            counts["r1"] += 1
        # -- EMA of G (half-life ema_kimg, optional ramp-up)
        ema_nimg = float(tr["ema_kimg"]) * 1000
        if tr.get("ema_rampup") and init is None:
            ema_nimg = min(ema_nimg, step * batch * float(tr["ema_rampup"]))  # images shown before this step
        step += 1
        nimg = step * batch
        beta = 1.0 if d_only else 0.5 ** (batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        # -- ADA: adjust p every 4 steps from the sign of D(real)
        if adaptive and step % 4 == 0 and ada_acc[1]:
            rt = ada_acc[0] / ada_acc[1]
            adjust = np.sign(rt - ada_target) * (batch * 4) / (float(tr["ada_kimg"]) * 1000)
            aug_p = float(min(max(aug_p + adjust, 0.0), 1.0))
            ada_acc = [0.0, 0]
        bar.update(1)
        # -- tick: log, samples, snapshot
        if step % tick_steps == 0 or step == total:
            now = time.time()
            entry = {"step": step, "kimg": round(nimg / 1000, 4)}
            for k, total_k in sums.items():
                entry[k] = round(total_k / counts[k], 6) if counts[k] else None
            entry.update(augment_p=round(aug_p, 6), seconds=round(now - tick_start, 3))
            if not all(math.isfinite(v) for v in (entry["loss_G"], entry["loss_D"])):
                bar.close()
                raise CellgenError(f"training diverged at step {step} (loss_G {entry['loss_G']}, "
                                   f"loss_D {entry['loss_D']}); try a larger --r1-gamma or a lower lr")
            append_log(log_path, entry)
            with torch.no_grad():
                samples = G_ema.synthesis(G_ema.mapping(sample_z, update_w_avg=False), noise_mode="const")
            _write_grid(out_dir / f"samples_{step:08d}.png", samples.float().cpu().numpy())
            for old in sorted(out_dir.glob("samples_*.png"))[:-keep_samples]:
                old.unlink()
            snapshot()
            if export_every_kimg and (step == total or int(nimg / 1000 / export_every_kimg) >
                                      int(last_tick_nimg / 1000 / export_every_kimg)):
                export_generator(out_dir, out_dir / "generators" / f"generator-{step:08d}.pt")
            last_tick_nimg = nimg
            bar.set_postfix(loss_G=entry["loss_G"], loss_D=entry["loss_D"], p=round(aug_p, 3))
            sums = dict.fromkeys(sums, 0.0)
            counts = dict.fromkeys(counts, 0)
            tick_start = time.time()
            if log is not None:
                log(entry)
            if out_of_time(t_start, max_minutes) and step < total:
                bar.close()
                print(f"stopped after {max_minutes} min at step {step} of {total}; run again to resume",
                      file=sys.stderr)
                return out_dir / "snapshot.pt"
    bar.close()

    gen_path = out_dir / "generator.pt"
    # wall time of all sessions up to the last snapshot (the final tick always writes one)
    wall = float(load_checkpoint(snap_path, SNAPSHOT_KIND)["extra"]["wall_s"]) if snap_path.exists() else \
        wall_before + time.time() - t_start
    info = {"data": str(data), "steps": step, "kimg": round(step * batch / 1000, 4), "batch": batch,
            "wall_time_s": round(wall, 1),
            "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
            "preset": preset, "seed": int(seed), "augment": str(augment), "final_augment_p": round(aug_p, 6)}
    pixel_size = _map_pixel_size(data, res)
    if pixel_size:
        info["pixel_size_um"] = pixel_size  # cellgen sample measures density with it
    _record_compartments(info, data)
    save_checkpoint(gen_path, GENERATOR_KIND, cfg, G_ema.state_dict(),
                    {"w_avg": G_ema.mapping.w_avg.detach().cpu()}, info=info)
    return gen_path


def _record_compartments(info: dict, data) -> None:
    """A generator trained on nucleus-only (or cell-only) masks says so; the sets sampled
    from it then declare only that compartment."""
    from cellgen.datasets.h5 import compartments_of

    compartments = compartments_of(data)
    if compartments and compartments != ["cell", "nucleus"]:
        info["compartments"] = compartments


def _map_pixel_size(data, resolution: int) -> float | None:
    """um/px of the generator's maps: the data's, scaled as :func:`_fit` crops and resizes."""
    pixel_size = pixel_size_of(data)
    if not pixel_size:
        return None
    from cellgen.datasets.h5 import BenchmarkSet

    with BenchmarkSet(data) as ds:
        side = min(ds.image_size)
    return float(pixel_size) * side / int(resolution)


def _changed_options(saved: dict, now: dict) -> list[str]:
    """What differs between a snapshot's recorded options and this call's, as option names.

    Everything that changes the trained weights counts: the network, the training
    hyper-parameters, batch, seed, augmentation, the data (by content) and the start weights.
    Only the data's path may differ (a moved file), and options an older snapshot did not
    record are not compared.
    """
    changed = ["network (preset)"] if saved.get("model") != now["model"] else []
    changed += changed_options(saved.get("training") or {}, now["training"])
    changed += [k.replace("data_sha256", "data")
                for k in changed_options(saved.get("run") or {}, now["run"], ignore=("data",))]
    return list(dict.fromkeys(changed))


def export_generator(run_dir, out_path=None, half: bool = False) -> Path:
    """Write the EMA generator of a run's last snapshot as a ``contour-generator`` checkpoint.

    For a run stopped before its planned length: the snapshot holds everything up to its
    last tick, and the run itself can still be resumed later.
    """
    run_dir = Path(run_dir)
    snap = load_checkpoint(run_dir / "snapshot.pt", SNAPSHOT_KIND)
    cfg = dict(snap["config"]["model"], training=snap["config"]["training"])
    G_ema = {k[len("G_ema."):]: v for k, v in snap["state_dict"].items() if k.startswith("G_ema.")}
    run = snap["config"].get("run", {})
    step = int(snap["extra"]["step"])
    batch = int(cfg["training"]["batch"])
    info = {"data": str(run.get("data", "")), "steps": step, "kimg": round(step * batch / 1000, 4), "batch": batch,
            "wall_time_s": round(float(snap["extra"]["wall_s"]), 1), "device": "cpu", "preset": cfg.get("preset"),
            "seed": run.get("seed"), "final_augment_p": round(float(snap["extra"]["augment_p"]), 6),
            "exported_from_snapshot": True}
    pixel_size = _map_pixel_size(run["data"], int(cfg["resolution"])) if run.get("data") else None
    if pixel_size:
        info["pixel_size_um"] = pixel_size
    if run.get("data"):
        _record_compartments(info, run["data"])
    return save_checkpoint(Path(out_path or run_dir / "generator.pt"), GENERATOR_KIND, cfg, G_ema,
                           {"w_avg": G_ema["mapping.w_avg"]}, info=info, half=half)
