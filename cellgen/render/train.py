"""Training the pix2pixHD renderer on image + mask pairs (resumable, CPU or CUDA).

Objective as the paper / official code: LSGAN (discriminator on the concatenated
input-label + image, ``num_D`` scales), discriminator feature matching (``lambda_feat``
10), optional VGG19 perceptual loss (only with a local weights file; off by default), and the
config's EfficientNet-Lite0 perceptual, region-mean and spectrum losses
(:mod:`cellgen.render.losses`; on in ``varied256``). The
discriminator loss is ``0.5 * (D_fake + D_real)``; no image pool (official default
``pool_size`` 0). Adam (lr 2e-4, beta1 0.5, beta2 0.999); the learning rate is constant
for the first ``niter`` steps and decays linearly to 0 over the last ``niter_decay`` steps
(the paper's 100 + 100 epochs; here counted in steps, half and half by default).

Data: a benchmark set or an export folder (:mod:`cellgen.render.data`). Each step draws
``batch`` images, a random ``size`` x ``size`` crop of each (the whole image when it is not
larger) and, with ``augment``, a random flip / 90 degree rotation. All randomness of step
``k`` comes from a generator seeded by ``(seed, k)``, so a resumed run repeats exactly what
an uninterrupted run would have done.

Outputs in ``out_dir``:

* ``snapshot.pt`` / ``.json``: kind ``renderer-training`` (G in ``state_dict``; D, both
  optimiser states, step, torch RNG state in ``extra``), rewritten atomically every tick;
* ``log.jsonl``: one JSON object per line (a ``start`` record, one per tick, an ``end``);
* ``samples/step_NNNNNNN.png``: per tick, rows of mask | real | rendered (RGB: green
  cytoplasm, blue nucleus, edges white on the mask);
* ``renderer.pt`` / ``.json``: kind ``renderer``, the final generator plus info (data,
  steps, wall time, device).

Public API: :func:`train_renderer`, :class:`RendererTrainingConfig`, :func:`lr_at`, :data:`SNAPSHOT_KIND`.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cellgen.checkpoint import load_checkpoint, load_into, save_checkpoint
from cellgen.datasets.h5 import pixel_size_of
from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path
from cellgen.render import appearance, losses, networks
from cellgen.render.data import open_pairs
from cellgen.render.renderer import KIND, resolve_device
from cellgen.runs import append_log, changed_options, data_digest, load_snapshot, out_of_time

SNAPSHOT_KIND = "renderer-training"


def lr_at(step: int, lr: float, niter: int, niter_decay: int) -> float:
    """Learning rate for step ``step`` (0-based): constant, then linear decay towards 0."""
    if step < niter or niter_decay <= 0:
        return lr
    return lr * max(0.0, 1.0 - (step - niter) / niter_decay)


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _crop_side(n: int, size: int, factor: int) -> int:
    side = min(size, n) // factor * factor
    if side <= 0:
        raise CellgenError(f"training images of side {n} are smaller than the network's downsampling factor {factor}")
    return side


def _augment(arrays, k: int, flip: bool):
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def _batch(source, step: int, seed: int, batch: int, ch: int, cw: int, augment: bool):
    rng = np.random.default_rng([int(seed), int(step)])
    idx = rng.integers(0, len(source), size=batch)
    imgs, sems, cells, nucs = [], [], [], []
    for i in idx:
        p = source.get(int(i))
        h, w = p.semantic.shape
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        arrs = [p.image[(slice(None),) + sl], p.semantic[sl], p.cell[sl], p.nucleus[sl]]
        if augment:
            k = int(rng.integers(0, 4)) if ch == cw else 2 * int(rng.integers(0, 2))
            arrs = _augment(arrs, k, bool(rng.integers(0, 2)))
        for lst, a in zip((imgs, sems, cells, nucs), arrs):
            lst.append(a)
    return np.stack(imgs), np.stack(sems), np.stack(cells), np.stack(nucs)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """(2, H, W) [0, 1] -> (H, W, 3) uint8 RGB, green cytoplasm, blue nucleus."""
    rgb = np.zeros(image.shape[1:] + (3,), np.float32)
    rgb[..., 1] = image[1]
    rgb[..., 2] = image[0]
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _mask_rgb(x: np.ndarray) -> np.ndarray:
    """(4, H, W) generator input -> RGB: cytoplasm green, nucleus blue, edges white."""
    rgb = np.zeros(x.shape[1:] + (3,), np.float32)
    rgb[..., 1] = x[2] * 0.6
    rgb[..., 2] = x[1] * 0.8
    rgb[x[3] > 0] = 1.0
    return (rgb * 255 + 0.5).astype(np.uint8)


def write_triptych(path: Path, inputs: torch.Tensor, real: np.ndarray, fake: np.ndarray) -> None:
    """PNG: one row per image, columns mask | real | rendered."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image as mpimg

    rows = []
    for x, r, f in zip(inputs.cpu().numpy(), real, fake):
        sep = np.full((x.shape[1], 2, 3), 128, np.uint8)
        rows.append(np.concatenate([_mask_rgb(x), sep, _to_rgb(r), sep, _to_rgb(f)], axis=1))
    hsep = np.full((2, rows[0].shape[1], 3), 128, np.uint8)
    grid = np.concatenate([np.concatenate([r, hsep], 0) for r in rows], 0)[:-2]
    with atomic_path(path) as tmp:
        mpimg.imsave(tmp, grid, format="png")


def _describe(data) -> str:
    return str(Path(data).resolve())


@dataclass(frozen=True)
class RendererTrainingConfig:
    """What decides a renderer training run's result (and how often it records itself).

    Exactly one of ``steps`` (optimiser steps) and ``epochs`` (passes over the images,
    ``ceil(n / batch)`` steps each) sets the length. The last ``decay_fraction`` of the
    steps decays the learning rate linearly to zero. ``config_overrides`` change single keys
    of the ``preset``'s network config. ``vgg_weights`` (a local VGG19 state dict) adds the
    VGG perceptual loss. ``init_from`` starts a new run from trained weights instead of random
    ones: a renderer checkpoint (G only; D starts fresh) or a training snapshot (G and D); the
    model config is then the checkpoint's, not ``preset``'s. This is how to fine-tune the
    shipped renderer on a few of your own images, or to give a paused run a new schedule (for
    example a learning-rate decay phase). With ``adapt_init`` the config is ``preset``'s (plus
    overrides) and the init weights are copied wherever they fit
    (:func:`cellgen.render.networks.transplant`): a warm start for a changed architecture.
    ``tick`` (default: ~20 per run, at most every 500 steps) is how often a snapshot, a sample
    PNG and a log line are written; ``n_samples`` is the number of images in each sample PNG.
    """

    preset: str = "small256"
    steps: int | None = None
    epochs: float | None = None
    batch: int = 1
    seed: int = 0
    augment: bool = True
    decay_fraction: float = 0.5
    config_overrides: dict | None = None
    vgg_weights: str | Path | None = None
    init_from: str | Path | None = None
    adapt_init: bool = False
    tick: int | None = None
    n_samples: int = 3


def train_renderer(data, out_dir, config: RendererTrainingConfig | None = None, *, device: str = "cpu",
                   progress: bool = True, max_minutes: float | None = None, resume: bool = True, log=None,
                   threads: int | None = None, **options) -> Path:
    """Train (or resume training) a renderer on ``data``; returns the path of ``renderer.pt``.

    ``config`` (default :class:`RendererTrainingConfig`) says what to train; keyword
    ``options`` replace single fields of it (``train_renderer(data, out, steps=10)``).
    ``max_minutes`` stops early (after a snapshot) so a later call can resume; the return
    value is then the snapshot path. ``threads`` sets torch's CPU thread count for the
    call (restored afterwards; on a CPU shared with other jobs, 1 is often fastest).
    ``log`` is a callable for human-readable messages (default ``tqdm.write`` when
    ``progress``, else silent).

    A config with ``feat_nc`` measures the appearance tables (:mod:`cellgen.render.appearance`)
    on ``data`` at the start (also when starting from ``init_from``: a fine-tuned renderer draws
    its cells from the images it was tuned on) and keeps them with the weights; with ``lambda_perc`` > 0 the
    EfficientNet-Lite0 perceptual loss (:mod:`cellgen.render.perceptual`) joins the objective.
    """
    config = replace(config or RendererTrainingConfig(), **options)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _train(data, out_dir, device=device, resume=resume, progress=progress, max_minutes=max_minutes,
                      log=log, **{f.name: getattr(config, f.name) for f in fields(config)})
    finally:
        torch.set_num_threads(old_threads)


def _train(data, out_dir, *, preset, steps, epochs, batch, seed, device, resume, progress, tick, decay_fraction,
           augment, vgg_weights, config_overrides, n_samples, max_minutes, log, init_from, adapt_init) -> Path:
    say = log if log is not None else (tqdm.write if progress else (lambda msg: None))
    out_dir = Path(out_dir)
    dev = resolve_device(device)
    init = _load_init(init_from) if init_from else None
    if init and not adapt_init:
        config = networks.complete_config(dict(init["config"], **(config_overrides or {})))
        networks.check_config(config)
    else:
        config = networks.make_config(preset, **(config_overrides or {}))
    if batch < 1:
        raise CellgenError(f"batch must be >= 1, got {batch}")
    if not 0.0 <= decay_fraction <= 1.0:
        raise CellgenError(f"decay_fraction must lie in [0, 1], got {decay_fraction}")
    source = open_pairs(data)
    try:
        n = len(source)
        if (steps is None) == (epochs is None):
            raise CellgenError("give exactly one of steps or epochs")
        total = int(steps) if steps is not None else int(math.ceil(float(epochs) * math.ceil(n / batch)))
        if total < 1:
            raise CellgenError(f"training needs at least one step, got {total}")
        niter_decay = int(round(total * decay_fraction))
        niter = total - niter_decay
        tick = int(tick) if tick else max(1, min(500, total // 20 or 1))
        factor = networks.downsampling_factor(config)
        h, w = source.shape
        ch, cw = _crop_side(h, config["size"], factor), _crop_side(w, config["size"], factor)
        training = {"data": _describe(data), "data_sha256": data_digest(data), "n_images": n, "steps": total, "niter": niter, "niter_decay": niter_decay,
                    "batch": int(batch), "seed": int(seed), "augment": bool(augment), "crop": [ch, cw],
                    "vgg_weights": str(vgg_weights) if vgg_weights else None,
                    "init_from": init["describe"] if init else None, "adapt_init": bool(init and adapt_init)}

        torch.manual_seed(seed)
        G = networks.build_generator(config).to(dev)
        D = networks.build_discriminator(config).to(dev)
        opt_G = torch.optim.Adam(G.parameters(), lr=config["lr"], betas=(config["beta1"], 0.999))
        opt_D = torch.optim.Adam(D.parameters(), lr=config["lr"], betas=(config["beta1"], 0.999))
        gan_loss = networks.GANLoss()
        vgg = networks.VGGLoss(vgg_weights).to(dev) if vgg_weights else None
        perc = None
        if float(config["lambda_perc"]) > 0:
            from cellgen.render.perceptual import EffNetPerceptualLoss

            perc = EffNetPerceptualLoss(dev)
        tables = None

        step, wall_before = 0, 0.0
        snap = out_dir / "snapshot.pt"
        if resume and snap.exists():
            ck = load_snapshot(snap, SNAPSHOT_KIND)  # a stale sidecar (killed between .pt and .json) is dropped
            saved = ck["config"]
            if networks.complete_config(saved.get("model", {})) != config:
                diff = sorted(k for k in set(config) | set(saved.get("model", {}))
                              if config.get(k) != saved.get("model", {}).get(k))
                raise CellgenError(f"{snap} was written with another renderer config (differs in: {', '.join(diff)}); "
                                   "use another output folder or resume=False to start over")
            # what changes the weights; the data by content, whatever its path
            keep = ("n_images", "steps", "niter", "niter_decay", "batch", "seed", "augment", "crop", "init_from",
                    "data_sha256", "vgg_weights", "adapt_init")
            diff = changed_options({k: v for k, v in saved["training"].items() if k in keep}, training)
            if diff:
                raise CellgenError(f"{snap} was written with other training settings (differs in: {', '.join(diff)}); "
                                   "use another output folder or resume=False to start over")
            weights, tables = appearance.split_state(ck["state_dict"])
            load_into(G, weights, source=f"{snap} (G)")
            ex = ck["extra"]
            load_into(D, ex["D"], source=f"{snap} (D)")
            opt_G.load_state_dict(ex["opt_G"])
            opt_D.load_state_dict(ex["opt_D"])
            torch.set_rng_state(ex["rng_torch"])
            step = int(ex["step"])
            wall_before = float(ex.get("wall_s", 0.0))
            say(f"resuming {snap} at step {step} of {total}")
        elif init and adapt_init:
            # the init's appearance tables describe its own training images; these are measured below
            weights, _ = appearance.split_state(init["G"])
            counts = networks.transplant(G, weights)
            if init["D"] is not None:
                networks.transplant(D, init["D"])
            say(f"starting from the weights of {init_from} where they fit: {counts['copied']} tensors copied, "
                f"{counts['adapted']} adapted, {counts['fresh']} fresh")
        elif init:
            weights, _ = appearance.split_state(init["G"])
            load_into(G, weights, source=f"{init_from} (G)")
            if init["D"] is not None:
                load_into(D, init["D"], source=f"{init_from} (D)")
            say(f"starting from the weights of {init_from}" + ("" if init["D"] is not None else " (D from scratch)"))
        if int(config["feat_nc"]) and tables is None:
            tables = appearance.collect_tables(source, seed=seed, relative=appearance.relative_tables(config))
            say(f"appearance tables: {len(tables['cells'])} cells, {len(tables['background'])} backgrounds")
        elif not int(config["feat_nc"]):
            tables = None
        out_dir.mkdir(parents=True, exist_ok=True)
        logf = out_dir / "log.jsonl"

        def write_log(record: dict):
            append_log(logf, record, sort_keys=True)

        vgg_note = (f"VGG19 perceptual loss on (weights {vgg_weights})" if vgg else
                    "VGG19 perceptual loss off (pass vgg_weights=PATH of a local VGG19 state dict to enable it)")
        say(vgg_note)
        write_log({"event": "start" if step == 0 else "resume", "step": step, "config": config, "training": training,
                   "device": str(dev), "n_params_G": networks.count_parameters(G),
                   "n_params_D": networks.count_parameters(D), "vgg_loss": vgg_note, "time": time.time()})

        # fixed sample images (centre crops) for the per-tick triptychs
        sample_idx = list(range(min(n_samples, n)))
        samples = []
        for i in sample_idx:
            p = source.get(i)
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
            samples.append((p.image[(slice(None),) + sl], p.semantic[sl], p.cell[sl], p.nucleus[sl]))

        def save_snapshot(wall: float):
            extra = {"D": _to_cpu(D.state_dict()), "opt_G": _to_cpu(opt_G.state_dict()),
                     "opt_D": _to_cpu(opt_D.state_dict()), "step": int(step), "rng_torch": torch.get_rng_state(),
                     "wall_s": float(wall)}
            save_checkpoint(snap, SNAPSHOT_KIND, {"model": config, "training": training},
                            appearance.join_state(G.state_dict(), tables), extra=extra,
                            info={"step": int(step), "steps": total, "wall_s": wall})

        def write_samples():
            if not samples:
                return
            G.eval()
            with torch.inference_mode():
                x = networks.encode_masks(np.stack([s[1] for s in samples]), np.stack([s[2] for s in samples]),
                                          np.stack([s[3] for s in samples]), device=dev)
                extra = [appearance.extra_inputs(config, tables, s[1], s[2], seed=i) for i, s in enumerate(samples)]
                gin = x if extra[0] is None else torch.cat([x, torch.from_numpy(np.stack(extra)).to(dev)], 1)
                fake = networks.to_unit(networks.run_generator(G, config, gin)).cpu().numpy()
            G.train()
            write_triptych(out_dir / "samples" / f"step_{step:07d}.png", x, np.stack([s[0] for s in samples]), fake)

        t0 = time.time()
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(total=total, initial=step, desc="training renderer", unit="step", disable=not progress)
        lambda_region, lambda_spectrum = float(config["lambda_region"]), float(config["lambda_spectrum"])
        stopped_early = False
        G.train()
        D.train()
        while step < total:
            lr = lr_at(step, config["lr"], niter, niter_decay)
            for o in (opt_G, opt_D):
                for g in o.param_groups:
                    g["lr"] = lr
            img, sem, cel, nuc = _batch(source, step, seed, batch, ch, cw, augment)
            x = networks.encode_masks(sem, cel, nuc, device=dev)
            real = networks.to_tanh(torch.from_numpy(img).to(dev))
            extra = appearance.training_inputs(config, img, sem, cel, np.random.default_rng([int(seed), int(step), 1]))
            gin = x if extra is None else torch.cat([x, torch.from_numpy(extra).to(dev)], 1)
            fake = networks.run_generator(G, config, gin)

            # as the official code: D scores detached fake, real and fake with the same
            # (pre-update) weights; then G steps, then D steps
            pred_fake_d = D(torch.cat([x, fake.detach()], 1))
            pred_real = D(torch.cat([x, real], 1))
            pred_fake = D(torch.cat([x, fake], 1))
            loss_d_fake = gan_loss(pred_fake_d, False)
            loss_d_real = gan_loss(pred_real, True)
            loss_g_gan = gan_loss(pred_fake, True)
            loss_g_feat = (torch.zeros((), device=dev) if config["no_ganFeat_loss"] else
                           networks.feature_matching_loss(pred_fake, pred_real, config["n_layers_D"],
                                                          config["num_D"], config["lambda_feat"]))
            loss_g_vgg = vgg(fake, real) * config["lambda_feat"] if vgg is not None else torch.zeros((), device=dev)
            loss_g_perc = perc(fake, real) * float(config["lambda_perc"]) if perc is not None else \
                torch.zeros((), device=dev)
            loss_g_region = (losses.region_mean_loss(fake, real, _region_labels(sem, cel, dev)) * lambda_region
                             if lambda_region > 0 else torch.zeros((), device=dev))
            loss_g_spec = (losses.spectrum_loss(fake, real) * lambda_spectrum if lambda_spectrum > 0
                           else torch.zeros((), device=dev))
            loss_g = loss_g_gan + loss_g_feat + loss_g_vgg + loss_g_perc + loss_g_region + loss_g_spec
            loss_d = 0.5 * (loss_d_fake + loss_d_real)
            opt_G.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_G.step()
            opt_D.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_D.step()

            terms = {"G_GAN": loss_g_gan, "G_GAN_Feat": loss_g_feat, "G_VGG": loss_g_vgg, "G_perc": loss_g_perc,
                     "G_region": loss_g_region, "G_spectrum": loss_g_spec, "D_real": loss_d_real, "D_fake": loss_d_fake}
            vals = {k: float(v.detach()) for k, v in terms.items()}
            if not all(math.isfinite(v) for v in vals.values()):
                raise CellgenError(f"training diverged at step {step}: losses {vals}")
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            step += 1
            bar.update(1)
            time_up = out_of_time(t0, max_minutes)
            if step % tick == 0 or step == total or time_up:
                wall = wall_before + time.time() - t0
                save_snapshot(wall)
                write_samples()
                means = {k: v / count for k, v in sums.items()}
                write_log({"event": "tick", "step": step, "lr": lr, "wall_s": round(wall, 3), **means})
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()
                                 if (k != "G_VGG" or vgg is not None) and (k != "G_perc" or perc is not None)})
                sums, count = {}, 0
                if time_up and step < total:
                    stopped_early = True
                    break
        bar.close()
        wall = wall_before + time.time() - t0
        if stopped_early:
            say(f"stopped after {max_minutes} min at step {step} of {total}; run again to resume")
            write_log({"event": "paused", "step": step, "wall_s": wall})
            return snap
        info = {"data": training["data"], "n_images": n, "steps": total, "batch": batch, "seed": seed,
                "wall_time_s": round(wall, 1), "device": str(dev),
                "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
                "torch": torch.__version__, "vgg_loss": bool(vgg), "preset": preset, "init_from": training["init_from"]}
        if pixel_size_of(training["data"]):
            info["pixel_size_um"] = pixel_size_of(training["data"])  # cellgen sample matches scales with it
        final = out_dir / "renderer.pt"
        save_checkpoint(final, KIND, config, appearance.join_state(G.state_dict(), tables), info=info)
        write_log({"event": "end", "step": step, "wall_s": round(wall, 3), "renderer": str(final)})
        say(f"renderer written to {final} ({total} steps, {wall / 60:.1f} min)")
        return final
    finally:
        source.close()


def _region_labels(semantic: np.ndarray, cell: np.ndarray, dev) -> torch.Tensor:
    return torch.from_numpy(np.stack([appearance.region_labels(s, c) for s, c in zip(semantic, cell)])).to(dev)


def _load_init(path) -> dict:
    """Weights to start from: a renderer checkpoint (G) or a renderer training snapshot (G, D)."""
    ck = load_checkpoint(path)
    if ck.get("kind") == SNAPSHOT_KIND:
        config, D = ck["config"]["model"], ck["extra"]["D"]
    elif ck.get("kind") == KIND:
        config, D = ck["config"], None
    else:
        raise CellgenError(f"{path} holds a '{ck.get('kind')}' checkpoint; start from a '{KIND}' checkpoint "
                           f"or a '{SNAPSHOT_KIND}' snapshot")
    return {"config": dict(config), "G": ck["state_dict"], "D": D,
            "describe": {"path": str(path), "sha256": ck["sha256"]}}


def export_renderer(run_dir, out_path=None, half: bool = False) -> Path:
    """Write the generator of a run's last snapshot as a ``renderer`` checkpoint.

    For a run paused by ``max_minutes`` (or stopped): the snapshot holds everything up to its
    last tick; the run can still be resumed later.
    """
    run_dir = Path(run_dir)
    snap = load_checkpoint(run_dir / "snapshot.pt", SNAPSHOT_KIND)
    training = snap["config"]["training"]
    step = int(snap["extra"]["step"])
    info = {"data": training.get("data"), "steps": step, "planned_steps": training.get("steps"),
            "wall_time_s": round(float(snap["extra"]["wall_s"]), 1), "device": "cpu",
            "torch": torch.__version__, "preset": snap["config"]["model"].get("preset"),
            "exported_from_snapshot": True, "init_from": training.get("init_from")}
    if training.get("data") and pixel_size_of(training["data"]):
        info["pixel_size_um"] = pixel_size_of(training["data"])
    return save_checkpoint(Path(out_path or run_dir / "renderer.pt"), KIND, snap["config"]["model"],
                           snap["state_dict"], info=info, half=half)
