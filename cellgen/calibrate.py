"""Calibrate the generator and renderer on a lab's own annotated images.

``calibrate(real.h5, run/)`` trains the contour generator on the set's masks and the renderer
on its image + mask pairs (from scratch, or fine-tuning the shipped models), exports the pair
as ``run/generator.pt`` and ``run/renderer.pt`` with model cards, and measures what they make
against the user's images: ``run/report.md`` and ``run/report.json``.

Each stage is a resumable training run in its own folder (``run/contours``, ``run/renderer``);
``max_minutes`` is the wall-time budget of one call, shared by the stages in order, so the
same command run again carries on where the last one stopped. A nucleus-only (or cell-only)
set gives a one-compartment pair: its checkpoints record the compartments, and the sets
``cellgen sample`` draws from them declare only those.

Public API: :class:`CalibrationConfig`, :func:`calibrate`, :func:`calibration_report`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path, file_digest

STATE_FILE = "calibration.json"


@dataclass
class CalibrationConfig:
    """What decides the calibrated pair (a rerun with other values is refused)."""

    generator_preset: str = "small128"
    renderer_preset: str = "varied256"  # the shipped renderer's, so fine-tuning starts from it
    generator_kimg: float = 20.0
    renderer_steps: int = 2000
    fine_tune: bool = True  # start from the shipped models where the presets match
    seed: int = 0
    report_images: int = 32  # generated images the quality report compares with the set
    segmenter_steps: int = 300  # training of the Table-3 U-Net in the report


def _check_data(data: Path) -> dict:
    from cellgen.datasets.h5 import BenchmarkSet

    if not data.exists():
        raise CellgenError(f"{data} does not exist; import your images first with 'cellgen datasets import'")
    with BenchmarkSet(data) as ds:
        if not ds.has_images:
            raise CellgenError(f"{data} is a masks-only set: calibration needs images with their masks")
        if len(ds) < 2:
            raise CellgenError(f"{data} holds {len(ds)} image; calibration needs at least 2")
        return {"n_images": len(ds), "compartments": ds.compartments, "pixel_size_um": ds.pixel_size_um,
                "image_size": list(ds.image_size)}


def _shipped(kind: str, preset: str, fine_tune: bool):
    """The shipped checkpoint to start from, when fine-tuning and its preset matches."""
    if not fine_tune:
        return None
    from cellgen.checkpoint import load_checkpoint
    from cellgen.defaults import default_checkpoint

    try:
        path = default_checkpoint(kind)
    except CellgenError:
        return None
    shipped_preset = load_checkpoint(path).get("config", {}).get("preset")
    return path if shipped_preset == preset else None


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, (deadline - time.time()) / 60.0)


def calibrate(data, out_dir, config: CalibrationConfig | None = None, *, max_minutes: float | None = None,
              device: str = "cpu", progress: bool = True) -> dict:
    """Train (or resume) the calibrated pair; returns the state, with ``done`` once all is written."""
    from cellgen.gen.train import ContourTrainingConfig, train_contours
    from cellgen.render.train import RendererTrainingConfig, train_renderer

    config = config or CalibrationConfig()
    data, out = Path(data), Path(out_dir)
    facts = _check_data(data)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    wanted = {"data_sha256": file_digest(data), "config": asdict(config)}
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if {k: previous.get(k) for k in wanted} != wanted:
            raise CellgenError(f"{out} holds a calibration of other data or options; choose another -o or delete it")
    state = dict(wanted, data=str(data), facts=facts, device=str(device), done=False)
    with atomic_path(state_path) as tmp:
        tmp.write_text(json.dumps(state, indent=2))
    deadline = None if max_minutes is None else time.time() + 60.0 * max_minutes

    gen_path = out / "contours" / "generator.pt"
    if not gen_path.exists():
        init = _shipped("generator", config.generator_preset, config.fine_tune)
        run = ContourTrainingConfig(preset=config.generator_preset, kimg=config.generator_kimg, seed=config.seed,
                                    init=init, d_warmup_kimg=min(2.0, config.generator_kimg / 4) if init else 0.0)
        result = train_contours(data, out / "contours", run, device=device, progress=progress,
                                max_minutes=_remaining(deadline))
        if result != gen_path:
            return state  # paused by the budget; the same call resumes
    rend_path = out / "renderer" / "renderer.pt"
    if not rend_path.exists():
        init = _shipped("renderer", config.renderer_preset, config.fine_tune)
        run = RendererTrainingConfig(preset=config.renderer_preset, steps=config.renderer_steps, seed=config.seed,
                                     init_from=init)
        result = train_renderer(data, out / "renderer", run, device=device, progress=progress,
                                max_minutes=_remaining(deadline))
        if result != rend_path:
            return state
    _publish(gen_path, out / "generator.pt", facts)
    _publish(rend_path, out / "renderer.pt", facts)
    report = calibration_report(out / "generator.pt", out / "renderer.pt", data, out, n_images=config.report_images,
                                segmenter_steps=config.segmenter_steps, device=device, progress=progress)
    _write_cards(out, data, config, facts, report)
    state.update(done=True, report=str(out / "report.md"))
    with atomic_path(state_path) as tmp:
        tmp.write_text(json.dumps(state, indent=2))
    return state


def _publish(src: Path, dst: Path, facts: dict):
    """Copy a trained checkpoint to the run's top level, recording the set's compartments."""
    from cellgen.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(src)
    info = dict(ck.get("info") or {}, compartments=facts["compartments"])
    save_checkpoint(dst, ck["kind"], ck["config"], ck["state_dict"], ck.get("extra") or {}, info=info)


def calibration_report(generator, renderer, data, out_dir, *, n_images: int = 32, segmenter_steps: int = 300,
                       device: str = "cpu", progress: bool = True) -> dict:
    """Generated vs the user's set, written to ``out_dir/report.json`` and ``report.md``:
    the contour evaluation (count / area KS, layout diversity, precision / recall and
    FD-EffNetLite0 of the masks, density control; :mod:`cellgen.gen.evaluate`), the image
    FD-EffNetLite0 per tier, and rendering fidelity (the paper's Table 3)."""
    from cellgen.datasets.h5 import BenchmarkSet
    from cellgen.gen import evaluate as contour_eval
    from cellgen.gen.generator import ContourGenerator
    from cellgen.pipeline import generated_set, matched_size
    from cellgen.quality import load_backbone, quality_report
    from cellgen.render.evaluate import evaluate_renderer
    from cellgen.render.renderer import Renderer

    out = Path(out_dir)
    say = (lambda msg: print(msg, flush=True)) if progress else None
    gen = ContourGenerator.load(generator, device=device)
    rend = Renderer.load(renderer, device=device)
    net = load_backbone("efficientnet-lite0", device=device)
    with BenchmarkSet(data) as ds:
        n_data, square = len(ds), ds.image_size[0] == ds.image_size[1]
    report = {"data": str(data), "generator": str(generator), "renderer": str(renderer), "n_generated": n_images}
    if square and n_data >= 8:
        ref = contour_eval.load_reference(data, net, n=512, n_diversity=min(64, n_data))
        result = contour_eval.evaluate_contours(gen, ref, n=n_images, n_diversity=min(64, n_data, n_images),
                                                psi_seeds=min(16, n_images), progress=say)
        contour_eval.write_report(result, out / "contours-eval")
        report["contours"] = contour_eval.without_arrays(result)
    else:
        report["contours"] = {"skipped": "the contour evaluation needs at least 8 square images"}
    size = matched_size(gen, rend)
    samples = out / "generated.h5"
    generated_set(samples, gen, [(s, 1.0) for s in range(n_images)], renderer=rend, size=size,
                  pixel_size_um=gen.pixel_size_at(size), variants=[], overwrite=True, progress=progress)
    report["images"] = quality_report(samples, data, backbone=net, what=["images"], progress=progress)
    report["rendering"] = evaluate_renderer(rend, data, max_images=min(64, n_data), segmenter_steps=segmenter_steps,
                                            device=device,
                                            out_dir=out / "rendering", progress=progress)
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(report))
    return report


def _fmt(value, digits=3) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "-"


def _markdown(report: dict) -> str:
    lines = [f"# Calibration report: {Path(report['data']).name}", "",
             f"Generator `{report['generator']}` and renderer `{report['renderer']}`, "
             f"{report['n_generated']} generated images against the set.", ""]
    contours = report["contours"]
    if "skipped" in contours:
        lines += [f"Contours: {contours['skipped']}.", ""]
    else:
        lines += ["## Contours", "", "See `contours-eval/report.md` for every figure (diversity histogram, "
                  "near-duplicates, per-tier FD).", ""]
        for name, entry in contours.get("goals", {}).items():
            if isinstance(entry, dict) and "value" in entry:
                value = entry["value"]
                shown = "-".join(_fmt(v, 0) for v in value) if isinstance(value, list) else _fmt(value)
                lines.append(f"- {name}: {shown} ({'meets' if entry.get('met') else 'misses'} the shipped "
                             "generator's target)")
        lines.append("")
    lines += ["## Images (FD-EffNetLite0 per tier)", "", "| tier | n gen | n real | FD | real split-half |",
              "|---|---|---|---|---|"]
    from cellgen.quality import report_rows

    for _, tier, n_gen, n_ref, fd, floor in report_rows(report["images"]):
        if tier is not None:
            lines.append(f"| {tier} | {n_gen} | {n_ref} | {fd} | {floor} |")
    rendered = report["rendering"].get("rendered", {})
    real = report["rendering"].get("real", {})
    lines += ["", "## Rendering fidelity (Table 3: a U-Net trained on your images segments held-out rendered "
              "and real ones)", "", "| compartment | mIoU rendered | mIoU real | mDice rendered | mDice real |",
              "|---|---|---|---|---|"]
    for comp in sorted(set(rendered) & set(real)):
        r, g = real[comp], rendered[comp]
        lines.append(f"| {comp} | {_fmt(g.get('mIoU'))} | {_fmt(r.get('mIoU'))} | {_fmt(g.get('mDice'))} | "
                     f"{_fmt(r.get('mDice'))} |")
    return "\n".join(lines) + "\n"


def _write_cards(out: Path, data: Path, config: CalibrationConfig, facts: dict, report: dict):
    """Model cards beside the calibrated checkpoints: data, command, training, measured quality."""
    from cellgen.checkpoint import load_checkpoint

    for name, kind in (("generator", "contour generator"), ("renderer", "renderer")):
        ck = load_checkpoint(out / f"{name}.pt")
        info = ck.get("info") or {}
        preset = config.generator_preset if name == "generator" else config.renderer_preset
        start = _shipped(name, preset, config.fine_tune)
        card = [f"# Calibrated {kind}: {name}.pt", "",
                f"- data: `{data}` (sha256 {file_digest(data)[:16]}...), {facts['n_images']} images "
                f"{facts['image_size'][0]}x{facts['image_size'][1]} at {facts['pixel_size_um']} um/px, "
                f"compartments {', '.join(facts['compartments'])}",
                f"- preset {ck['config'].get('preset', '?')}, steps {info.get('steps', '?')}, "
                f"wall time {info.get('wall_time_s', '?')} s on {info.get('device', '?')}",
                f"- started from: {start or 'random weights'}",
                f"- sha256 {file_digest(out / f'{name}.pt')}",
                f"- measured quality: `report.md` beside this card (regenerate: `cellgen calibrate --data {data} "
                f"-o {out}` again, or `cellgen eval contours` / `cellgen eval render`)", ""]
        with atomic_path(out / f"{name}.md") as tmp:
            tmp.write_text("\n".join(card))
