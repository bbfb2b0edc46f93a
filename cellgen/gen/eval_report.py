"""Figures and markdown of a contour-generator evaluation (:mod:`cellgen.gen.evaluate`).

Public API: :func:`diversity_figure`, :func:`near_duplicates_figure`, :func:`markdown`,
:func:`ranking_markdown`, :func:`rank_folder`, :func:`training_figure`,
:func:`tier_examples_figure`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def diversity_figure(result: dict, path) -> None:
    """Histograms of the pairwise foreground IoU, generated beside the corpus."""
    plt = _plt()
    d = result["diversity"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    bins = np.linspace(0, 1, 41)
    for key, colour, label in (("histogram_corpus", "0.45", "corpus"), ("histogram_generated", "tab:red", "generated")):
        stats = d["corpus" if key == "histogram_corpus" else "generated"]
        ax.hist(d[key], bins=bins, density=True, histtype="stepfilled" if key == "histogram_corpus" else "step",
                color=colour, alpha=0.5 if key == "histogram_corpus" else 1.0, linewidth=1.8,
                label=f"{label}: mean {stats['mean']:.3f}, >0.6: {100 * stats['fraction_above']:.1f}%")
    ax.axvline(0.6, color="k", linestyle=":", linewidth=1)
    ax.set_xlabel("foreground IoU between two maps")
    ax.set_ylabel("density of pairs")
    ratio = d["ratio"]
    ax.set_title(f"layout diversity ({d['generated']['n_images']} maps each; ratio "
                 f"{'-' if ratio is None else f'{ratio:.2f}'}, noise {result['protocol']['noise_mode']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def near_duplicates_figure(result: dict, masks, path) -> None:
    """The closest generated pairs side by side (semantic maps with cell outlines); ``masks``
    maps a generated map's index to its (semantic, cell, nucleus) masks."""
    from cellgen.preview import outlined, semantic_rgb

    plt = _plt()
    pairs = result["diversity"]["closest_generated"]
    seed0 = result["protocol"]["seeds"][0]
    rows = max(1, len(pairs))
    fig, axes = plt.subplots(rows, 2, figsize=(4.2, 2.1 * rows), dpi=110, squeeze=False)
    for r, (i, j, iou) in enumerate(pairs):
        for c, k in enumerate((i, j)):
            ax = axes[r, c]
            semantic, cell, nucleus = masks[k]
            ax.imshow(outlined(semantic_rgb(semantic), cell, nucleus), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"seed {seed0 + k}" + (f"  IoU {iou:.2f}" if c == 1 else ""), fontsize=8)
    fig.suptitle(f"closest generated pairs (noise {result['protocol']['noise_mode']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# background, cytoplasm, nucleus, boundary (the label-map classes of cellgen.masks)
_CLASS_RGB = np.array([[0, 0, 0], [200, 200, 200], [90, 90, 220], [235, 50, 50]], np.uint8)


def tier_examples_figure(examples: dict, path) -> None:
    """Label maps per density tier, corpus (left) beside generated (right), classes coloured
    with the boundary class in red: what the numbers per tier look like."""
    plt = _plt()
    corpus, generated = examples["corpus"], examples["generated"]
    tiers = [t for t in generated if len(corpus.get(t, ())) or len(generated[t])]
    cols = max([len(corpus.get(t, ())) for t in tiers] + [len(generated[t]) for t in tiers] + [1])
    fig, axes = plt.subplots(max(1, len(tiers)), 2 * cols, figsize=(1.5 * 2 * cols, 1.9 * max(1, len(tiers))),
                             dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, t in enumerate(tiers):
        for side, maps in ((0, corpus.get(t, ())), (1, generated[t])):
            for c, classes in enumerate(maps):
                ax = axes[r, side * cols + c]
                ax.imshow(_CLASS_RGB[classes], interpolation="nearest")
                if c == 0:
                    ax.set_title(f"{t}: {'corpus' if side == 0 else 'generated'}", fontsize=8, loc="left")
    fig.suptitle("label maps per density tier (red: boundary between touching cells)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "-".join(_f(x, digits) for x in v)
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def markdown(result: dict) -> str:
    """The report as markdown: goals, diversity, P/R and FD per tier, KS, density control."""
    p, d, f, ks, c, g = (result[k] for k in ("protocol", "diversity", "fidelity", "ks", "density_control", "goals"))
    lines = ["# Contour generator evaluation", "",
             f"Generator `{result['generator']['path']}` (sha256 `{result['generator']['sha256'][:12]}`), "
             f"reference `{result['reference']['path']}` ({result['reference']['n']} maps, "
             f"{result['reference']['size']} px at {result['reference']['pixel_size_um']} um/px). "
             f"Generated: seeds {p['seeds'][0]}-{p['seeds'][1]} at psi 1, noise mode `{p['noise_mode']}`; "
             f"features: {p['features']}.", "",
             "## Goals (issue 14)", "", "| goal | value | met |", "|---|---|---|"]
    for name, e in g.items():
        if isinstance(e, dict):
            lines.append(f"| {name} | {_f(e['value'])} | {'yes' if e['met'] else '**no**'} |")
    gs, cs = d["generated"], d["corpus"]
    lines += ["", "## Diversity: pairwise foreground IoU (`diversity.png`)", "",
              "| maps | n | mean | median | p90 | max | pairs > 0.6 |", "|---|---|---|---|---|---|---|",
              f"| generated | {gs['n_images']} | {_f(gs['mean'])} | {_f(gs['median'])} | {_f(gs['p90'])} | "
              f"{_f(gs['max'])} | {100 * gs['fraction_above']:.1f}% |",
              f"| corpus | {cs['n_images']} | {_f(cs['mean'])} | {_f(cs['median'])} | {_f(cs['p90'])} | "
              f"{_f(cs['max'])} | {100 * cs['fraction_above']:.1f}% |", "",
              f"Ratio of the means: {_f(d['ratio'], 2)}. Closest generated pairs (`near_duplicates.png`): " +
              ", ".join(f"seeds {p['seeds'][0] + i} & {p['seeds'][0] + j} ({v:.2f})" for i, j, v in d["closest_generated"]) + ".",
              "", "## Precision, recall and FD-EffNetLite0 (masks)", "",
              f"Precision {_f(f['precision_recall']['precision'])}, recall {_f(f['precision_recall']['recall'])} "
              f"(Kynkäänniemi et al. 2019, k = {f['precision_recall']['k']}, {f['precision_recall']['n_generated']} "
              f"generated vs {f['precision_recall']['n_real']} corpus maps)" + (
                  "; the corpus's two halves against each other: precision "
                  f"{_f(f['precision_recall_corpus_split_half']['precision'])}, recall "
                  f"{_f(f['precision_recall_corpus_split_half']['recall'])}."
                  if f.get("precision_recall_corpus_split_half") else "."), "",
              "| tier | n generated | n corpus | FD | corpus split-half | ratio | precision | corpus split-half |",
              "|---|---|---|---|---|---|---|---|"]
    by_tier = f.get("precision_by_tier") or {}
    for t, e in f["fd"].items():
        p_t = by_tier.get(t, {})
        p_all = {"precision": f["precision_recall"]["precision"], "corpus_split_half":
                 (f.get("precision_recall_corpus_split_half") or {}).get("precision")} if t == "all" else p_t
        lines.append(f"| {t} | {e['n_generated']} | {e['n_reference']} | {_f(e['fd'], 1)} | {_f(e['split_half'], 1)} "
                     f"| {_f(e['ratio'], 2)} | {_f(p_all.get('precision'), 2)} "
                     f"| {_f(p_all.get('corpus_split_half'), 2)} |")
    if by_tier:
        lines += ["", "Precision per tier: the share of that tier's generated maps inside the corpus's k-NN "
                      "manifold; beside it, the same share for the corpus's odd maps of the tier against its even "
                      "ones (the ceiling). A tier far below its ceiling is where the generator leaves the corpus."]
    lines += ["", "## KS statistics (generated vs corpus)", "", "| | corpus | generated | KS |", "|---|---|---|---|",
              f"| cells per image (mean) | {_f(ks['count']['corpus_mean'], 1)} | {_f(ks['count']['generated_mean'], 1)} "
              f"| {_f(ks['count']['ks'])} |",
              f"| cell area, um^2 (median) | {_f(ks['cell_area_um2']['corpus_median'], 0)} | "
              f"{_f(ks['cell_area_um2']['generated_median'], 0)} | {_f(ks['cell_area_um2']['ks'])} |",
              f"| nucleus area, um^2 (median) | {_f(ks['nucleus_area_um2']['corpus_median'], 0)} | "
              f"{_f(ks['nucleus_area_um2']['generated_median'], 0)} | {_f(ks['nucleus_area_um2']['ks'])} |"]
    shape = result.get("shape") or {}
    if shape:
        lines += [f"| {v['label']} (median; not a goal) | {_f(v['corpus_median'], 2)} | {_f(v['generated_median'], 2)} "
                  f"| {_f(v['ks'])} |" for v in shape.values()]
        lines += ["", "The shape rows say how the generated objects differ where counts and areas agree: "
                      "a low precision with small area KS shows up here."]
    lines += ["", f"## Density control ({c['seeds']} seeds)", ""]
    if c["count_mean_by_psi"] is not None:
        counts = np.asarray(c["counts"])
        lines += ["| psi | counts | mean |", "|---|---|---|"]
        for j, psi in enumerate(c["psis"]):
            lines.append(f"| {psi:g} | {counts[:, j].min()}-{counts[:, j].max()} | {counts[:, j].mean():.1f} |")
        lines += ["", f"Counts span {_f(c['count_span'])}; psi monotonic for "
                      f"{100 * c['psi_monotonic_fraction']:.0f}% of seeds; the psi = 0 column holds "
                      f"{c['distinct_counts_at_psi0']} distinct counts."]
    lines += ["", f"Evaluation time: {result['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _kimg(result: dict):
    return (result.get("generator", {}).get("info") or {}).get("kimg")


def _ordered(results):
    """Results in training order: by the kimg the checkpoints record, else as given."""
    kimg = [_kimg(r) for _, r in results]
    if all(k is not None for k in kimg):
        return sorted(results, key=lambda pr: float(_kimg(pr[1]))), "training kimg"
    return list(results), "checkpoint (order given)"


def rank_folder(rank: int, path) -> str:
    """The report folder of the checkpoint ranked ``rank`` (0 = best) among several."""
    return f"{rank + 1:02d}-{Path(path).stem}"


def ranking_markdown(ranked) -> str:
    """Several checkpoints ranked best first (``ranked``: (path, result) pairs, as
    :func:`cellgen.gen.evaluate.rank_checkpoints` returns them)."""
    lines = ["# Contour generator snapshots, best first", "",
             "Ranked by failed goals, then the worst per-tier FD / floor, then 1 - min(precision, recall). "
             "`training.png` shows the same measures in training order.", "",
             "| rank | checkpoint | kimg | goals failed | precision | recall | IoU ratio | worst FD / floor "
             "| KS count | report |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, (path, r) in enumerate(ranked):
        g, pr, kimg = r["goals"], r["fidelity"]["precision_recall"], _kimg(r)
        failed = ", ".join(g["failed"]) or "none"
        lines.append(f"| {i + 1} | `{path}` | {'-' if kimg is None else f'{float(kimg):g}'} | {failed} | "
                     f"{_f(pr['precision'], 2)} | {_f(pr['recall'], 2)} | {_f(g['diversity_ratio']['value'], 2)} | "
                     f"{_f(g['fd_floor_ratio_worst_tier']['value'], 2)} | {_f(r['ks']['count']['ks'])} | "
                     f"[report]({rank_folder(i, path)}/report.md) |")
    return "\n".join(lines + [""])


def training_figure(results, path) -> None:
    """Precision, recall, the IoU ratio and the worst per-tier FD / floor of several
    checkpoints, in training order, with the issue's goals as dotted lines."""
    from cellgen.gen.evaluate import GOALS

    plt = _plt()
    ordered, xlabel = _ordered(results)
    x = [float(_kimg(r)) for _, r in ordered] if xlabel == "training kimg" else list(range(1, len(ordered) + 1))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.4), dpi=120)
    for key, colour in (("precision", "tab:red"), ("recall", "tab:blue")):
        ax1.plot(x, [r["fidelity"]["precision_recall"][key] for _, r in ordered], "o-", color=colour, label=key)
    ax1.axhline(GOALS["precision_min"], color="k", linestyle=":", linewidth=1, label="goal")
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("k-NN precision / recall")
    for key, colour, label in (("fd_floor_ratio_worst_tier", "tab:purple", "worst FD / floor"),
                               ("diversity_ratio", "tab:green", "IoU ratio to corpus")):
        ax2.plot(x, [r["goals"][key]["value"] if r["goals"][key]["value"] is not None else np.nan
                     for _, r in ordered], "o-", color=colour, label=label)
    ax2.axhline(GOALS["fd_floor_ratio_max"], color="tab:purple", linestyle=":", linewidth=1)
    ax2.axhline(GOALS["iou_ratio_max"], color="tab:green", linestyle=":", linewidth=1)
    ax2.set_ylabel("ratio (lower is better)")
    for ax in (ax1, ax2):
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
        if xlabel != "training kimg":
            ax.set_xticks(x)
    fig.suptitle(f"{len(ordered)} contour-generator checkpoints against the corpus (dotted: goals)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
