"""Do synthetic scores predict real ones? The transfer report of ``cellgen bench compare``.

Given bench results of several methods on a real set and on a synthetic set, per density
tier (and over all images):

- the rank agreement between the methods' order on real and on synthetic images
  (Kendall's tau-b; +1 the same order, -1 reversed; needs at least two methods);
- the score gap per method, synthetic minus real.

This is the question the reference paper answered with its Figures 5 and 6 (real vs
generated scores per density level). A results folder counts as *real* when the set it
scored was imported or built from real data (its images' ``source`` is ``import:...`` or
``real:...``), unless the caller says which folders are real.

Public API: :func:`transfer_report`, :func:`format_transfer`, :func:`plot_transfer`,
:func:`is_real_set`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from cellgen.errors import CellgenError

REAL_SOURCES = ("import:", "real:")


def is_real_set(path) -> bool:
    """True when the set's images come from a microscope (imported or a packaged real set)."""
    from cellgen.datasets.h5 import BenchmarkSet

    with BenchmarkSet(path) as ds:
        sources = {str(s) for s in ds.metadata["source"]}
    return bool(sources) and all(s.startswith(REAL_SOURCES) for s in sources)


def _scores(summary: dict, metric: str, compartment: str, variant: str) -> dict:
    return {r["tier"]: r[metric] for r in summary["summary"]
            if r["compartment"] == compartment and r["variant"] == variant and r.get(metric) is not None}


def transfer_report(real: dict[str, dict], synthetic: dict[str, dict], metric: str = "f1@0.5",
                    compartment: str | None = None, real_variant: str = "clean",
                    synthetic_variant: str = "clean") -> dict:
    """``real`` and ``synthetic`` map a method label to its ``summary.json`` content.

    Returns per tier: the methods' scores on both, the gaps and Kendall's tau."""
    methods = sorted(set(real) & set(synthetic))
    if not methods:
        raise CellgenError("the transfer report needs the same methods scored on a real and a synthetic set; "
                           f"real: {sorted(real) or 'none'}, synthetic: {sorted(synthetic) or 'none'}")
    if compartment is None:
        have = [{r["compartment"] for r in real[m]["summary"]} & {r["compartment"] for r in synthetic[m]["summary"]}
                for m in methods]
        common = set.intersection(*have)
        if not common:
            raise CellgenError("the real and synthetic results share no compartment")
        compartment = "cell" if "cell" in common else "nucleus"
    tiers = []
    for m in methods:
        for t in [*real[m].get("tiers", []), "all"]:
            if t not in tiers:
                tiers.append(t)
    rows = []
    for tier in tiers:
        r_scores, s_scores, used = [], [], []
        for m in methods:
            r = _scores(real[m], metric, compartment, real_variant).get(tier)
            s = _scores(synthetic[m], metric, compartment, synthetic_variant).get(tier)
            if r is None or s is None or not (np.isfinite(r) and np.isfinite(s)):
                continue
            r_scores.append(float(r))
            s_scores.append(float(s))
            used.append(m)
        if not used:
            continue
        tau = float("nan")
        if len(used) >= 2 and np.ptp(r_scores) > 0 and np.ptp(s_scores) > 0:
            tau = float(kendalltau(r_scores, s_scores).statistic)
        rows.append({
            "tier": tier, "methods": used, "real": r_scores, "synthetic": s_scores,
            "gap": [s - r for r, s in zip(r_scores, s_scores)], "kendall_tau": tau,
            "mean_abs_gap": float(np.mean(np.abs(np.subtract(s_scores, r_scores)))),
        })
    if not rows:
        raise CellgenError(f"no tier has {metric} scores for {compartment} on both sets "
                           f"(real variant {real_variant}, synthetic variant {synthetic_variant})")
    return {"metric": metric, "compartment": compartment, "real_variant": real_variant,
            "synthetic_variant": synthetic_variant, "methods": methods, "tiers": rows,
            "note": "kendall_tau: rank agreement of the methods on real vs synthetic images (tau-b, NaN with fewer "
                    "than two methods or tied scores); gap: synthetic minus real"}


def format_transfer(report: dict) -> str:
    lines = [f"transfer: {report['metric']} on {report['compartment']}, real ({report['real_variant']}) vs "
             f"synthetic ({report['synthetic_variant']})",
             f"{'tier':<8}{'kendall tau':>12}  " + "  ".join(f"{m[:18]:>18}" for m in report["methods"])]
    for row in report["tiers"]:
        gaps = dict(zip(row["methods"], row["gap"]))
        tau = "-" if not np.isfinite(row["kendall_tau"]) else f"{row['kendall_tau']:+.2f}"
        cells = [f"{100 * gaps[m]:+.1f} pt" if m in gaps else "-" for m in report["methods"]]
        lines.append(f"{row['tier']:<8}{tau:>12}  " + "  ".join(f"{c:>18}" for c in cells))
    lines.append("(per method: synthetic minus real, in percentage points)")
    return "\n".join(lines)


def plot_transfer(report: dict, path) -> Path:
    """Real vs synthetic score per method, one panel per tier, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellgen.fileio import atomic_path

    rows = report["tiers"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), squeeze=False)
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(report["methods"])}
    for ax, row in zip(axes[0], rows):
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, zorder=0)
        for m, r, s in zip(row["methods"], row["real"], row["synthetic"]):
            ax.scatter(r, s, color=colours[m], s=40, label=m)
        tau = row["kendall_tau"]
        ax.set_title(f"{row['tier']}  (tau {'-' if not np.isfinite(tau) else f'{tau:+.2f}'})", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"real {report['metric']}")
        ax.set_aspect("equal")
    axes[0][0].set_ylabel(f"synthetic {report['metric']}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def split_results(results_dirs, real_dirs=()) -> tuple[dict, dict]:
    """Load results folders into (real, synthetic) dicts of method label -> summary."""
    from cellgen.bench.report import SUMMARY_FILE, _label

    real_set = {str(Path(d).resolve()) for d in real_dirs}
    real, synthetic = {}, {}
    for d in list(results_dirs) + [d for d in real_dirs if str(Path(d).resolve()) not in
                                   {str(Path(x).resolve()) for x in results_dirs}]:
        f = Path(d) / SUMMARY_FILE
        if not f.exists():
            raise CellgenError(f"{d} has no {SUMMARY_FILE}; run 'cellgen bench' into it first")
        data = json.loads(f.read_text())
        if real_set:
            is_real = str(Path(d).resolve()) in real_set
        else:
            data_path = Path(data["run"]["data"])
            if not data_path.exists():
                raise CellgenError(f"{d} scored {data_path}, which is gone; say which results are real with --real")
            is_real = is_real_set(data_path)
        target = real if is_real else synthetic
        label = _label(data["run"])
        if label in target:
            raise CellgenError(f"two {'real' if is_real else 'synthetic'} results of {label}; compare one set of each")
        target[label] = data
    return real, synthetic
