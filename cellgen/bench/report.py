"""Bench reports: per-image CSV, per tier x variant summary (CSV + JSON), table and plot.

Tiers are summarised one by one and as ``all``. Pixel metrics are pooled MMSegmentation
style (totals summed over the tier's images); instance metrics pool TP/FP/FN over images.
Headline numbers carry 95% bootstrap confidence intervals over images.

Public API: :func:`summarise`, :func:`write_reports`, :func:`format_table`,
:func:`plot_summary`, :func:`compare`, :func:`compare_crowding`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cellgen.bench import crowding, linkage, metrics
from cellgen.bench.bootstrap import bootstrap_ci
from cellgen.bench import noise_axis
from cellgen.bench.runner import RUN, load_records
from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path, write_csv_rows

#: headline metrics with confidence intervals: name -> (kind, label)
HEADLINE = {
    "mIoU": ("pixel", "mIoU"),
    "mDice": ("pixel", "mDice"),
    "f1@0.5": ("instance", "F1@0.5"),
    "mean_ap": ("instance", "AP@[.5:.95]"),
    "pq": ("instance", "PQ"),
}
PIXEL_COLUMNS = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall")
INSTANCE_COLUMNS = ("precision@0.5", "recall@0.5", "f1@0.5", "ap@0.5", "ap@0.75", "f1@0.75", "mean_ap",
                    "pq", "sq", "rq", "mean_matched_iou", "seg", "n_true", "n_pred", "n_split", "n_merged")
LINKAGE_COLUMNS = ("linkage", "linkage_recall", "linkage_n")
SUMMARY_FILE = "summary.json"
#: what each output column means, written into summary.json (docs/metrics.md has the details)
METRIC_DEFINITIONS = {
    "ap@T": "average precision of DSB 2018 / StarDist: TP / (TP + FP + FN) at IoU >= T, one-to-one matching; "
            "NOT the area under a precision-recall curve (COCO AP)",
    "mean_ap": "mean of ap@T over T = 0.50, 0.55, ..., 0.95 (printed as AP@[.5:.95]); again TP/(TP+FP+FN), "
               "not the area under a precision-recall curve",
    "precision@T, recall@T, f1@T": "TP/(TP+FP), TP/(TP+FN), 2TP/(2TP+FP+FN) at IoU >= T",
    "pq, sq, rq": "panoptic quality = SQ x RQ at IoU >= 0.5; SQ = mean IoU of matches, RQ = TP/(TP+FP/2+FN/2)",
    "mean_matched_iou": "mean IoU of the one-to-one matches at IoU >= 0.5",
    "seg": "Cell Tracking Challenge SEG: mean over true objects of the IoU with the prediction covering > 50 % of it",
    "n_split, n_merged": "true objects split into >= 2 predictions; predictions merging >= 2 true objects",
    "aAcc, mIoU, mAcc, mDice, mFscore, mPrecision, mRecall": "pixel metrics, MMSegmentation style, "
                                                            "pooled over the images, mean of background and object",
    "linkage": "of the true nuclei matched at IoU >= 0.5, the fraction whose predicted nucleus lies (> 50 % of its "
               "pixels) in a predicted cell that overlaps their own true cell best (highest IoU); only for methods "
               "giving both compartments; repeated on a tier's cell and nucleus rows",
    "linkage_recall": "the same count over all true nuclei (found and put in the right cell)",
    "linkage_n": "true nuclei matched, the denominator of linkage",
    "*_ci_low, *_ci_high": "95 % percentile bootstrap interval over images",
    "pooling": "counts are summed over a tier's images before ratios are taken",
}


def _flat_instance(m: dict) -> dict:
    out = {}
    thresholds = np.asarray(m["thresholds"])
    for name in INSTANCE_COLUMNS:
        if "@" in name:
            key, t = name.split("@")
            out[name] = float(np.asarray(m[key])[np.isclose(thresholds, float(t))][0])
        else:
            out[name] = float(m[name])
    return out


def _scored(pix, inst) -> dict:
    row = {k: float(v) for k, v in metrics.pixel_metrics(pix).items() if k in PIXEL_COLUMNS}
    row.update(_flat_instance(metrics.instance_metrics(inst)))
    return row


def per_image_rows(records) -> list[dict]:
    rows = []
    for rec in records:
        for comp, (pix, inst) in rec["scores"].items():
            rows.append(dict(index=rec["index"], variant=rec["variant"], tier=rec["tier"], compartment=comp,
                             seconds=round(rec["seconds"], 4), **_scored(pix, inst)))
    return rows


def summarise(records, tier_names, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (compartment, variant, tier) plus tier ``all``, with CIs for headline metrics."""
    rows = []
    keys = sorted({(c, r["variant"]) for r in records for c in r["scores"]},
                  key=lambda cv: (cv[0] != "cell", cv[1] != "clean", cv[1]))
    for comp, variant in keys:
        for tier in [*tier_names, "all"]:
            sel = [r for r in records if r["variant"] == variant and comp in r["scores"]
                   and (tier == "all" or r["tier"] == tier)]
            if not sel:
                continue
            pix = [r["scores"][comp][0] for r in sel]
            inst = [r["scores"][comp][1] for r in sel]
            row = dict(compartment=comp, variant=variant, tier=tier, n_images=len(sel),
                       **_scored(metrics.pool_pixel_totals(pix), metrics.pool_instance_counts(inst)))
            for name, (kind, _) in HEADLINE.items():
                lo, hi = bootstrap_ci(pix if kind == "pixel" else inst, name, n_boot=n_boot, seed=seed)
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = lo, hi
            links = [r["linkage"] for r in sel if "linkage" in r]
            row.update(linkage.linkage_metrics(linkage.pool_linkage(links)) if links
                       else dict.fromkeys(LINKAGE_COLUMNS, float("nan")))
            row["seconds_per_image"] = float(np.mean([r["seconds"] for r in sel]))
            rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]):
    write_csv_rows(path, rows)


def write_reports(results_dir, tier_names, n_boot: int = 1000) -> list[dict]:
    """Write per_image.csv, summary.csv, summary.json, summary.png, crowding.csv and crowding.png;
    return the summary rows."""
    out = Path(results_dir)
    records = load_records(out)
    if not records:
        raise CellgenError(f"{out} holds no finished images to report on")
    run = json.loads((out / RUN).read_text())
    rows = summarise(records, tier_names, n_boot=n_boot)
    _write_csv(out / "per_image.csv", per_image_rows(records))
    _write_csv(out / "summary.csv", rows)
    with atomic_path(out / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps({"run": run, "tiers": list(tier_names), "metric_definitions": METRIC_DEFINITIONS,
                                   "summary": rows}, indent=2))
    plot_summary({_label(run): rows}, out / "summary.png", list(tier_names))
    noise_axis.write_noise_axis(out, records, run, tier_names, n_boot=n_boot, label=_label(run))
    crowding.write_crowding(out, records, label=_label(run))
    return rows


def _label(run: dict) -> str:
    d = run.get("method", {})
    name = d.get("method", "?")
    model = d.get("model") or ""
    return f"{name} ({Path(str(model)).name})" if model else name


def _pct(v) -> str:
    return "   -  " if v is None or v != v else f"{100 * v:6.1f}"


def format_table(rows: list[dict], label_key: str | None = None) -> str:
    """Plain-text table of headline metrics in percent with 95% CIs."""
    head = ["compartment", "variant", "tier", "n"] + ([label_key] if label_key else [])
    lines = []
    header = "  ".join(f"{h:<11}" for h in head) + "".join(f"{HEADLINE[m][1]:>22}" for m in HEADLINE)
    lines.append(header)
    lines.append("-" * len(header))
    for r in rows:
        cells = [r["compartment"], r["variant"], r["tier"], str(r["n_images"])] + ([r[label_key]] if label_key else [])
        text = "  ".join(f"{c:<11}" for c in cells)
        for m in HEADLINE:
            text += f"{_pct(r[m])} [{_pct(r[m + '_ci_low']).strip():>5},{_pct(r[m + '_ci_high']).strip():>5}]".rjust(22)
        lines.append(text)
    lines.append("AP@[.5:.95] = mean over IoU 0.50:0.95 of TP/(TP+FP+FN) (DSB 2018), not the area under a "
                 "precision-recall curve; 95% bootstrap CIs in brackets")
    linked = [r for r in rows if r["compartment"] == "nucleus" and r["tier"] == "all"
              and isinstance(r.get("linkage"), float) and r["linkage"] == r["linkage"]]
    if linked:
        lines.append("nucleus-to-cell linkage, tier all (found nuclei put in the right cell): " + ", ".join(
            f"{r[label_key] + ' ' if label_key else ''}{r['variant']} {_pct(r['linkage']).strip()}%" for r in linked))
    return "\n".join(lines)


def plot_summary(by_label: dict[str, list[dict]], path, tier_names, metric_names=("mIoU", "f1@0.5", "mean_ap")):
    """Bars of each metric by density tier, per compartment, per method/variant, with 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compartments = [c for c in ("cell", "nucleus") if any(r["compartment"] == c for rows in by_label.values() for r in rows)]
    series = []  # (label, variant)
    for label, rows in by_label.items():
        for v in dict.fromkeys(r["variant"] for r in rows):
            series.append((label, v))
    tiers = [t for t in tier_names if any(r["tier"] == t for rows in by_label.values() for r in rows)] + ["all"]
    fig, axes = plt.subplots(len(metric_names), len(compartments),
                             figsize=(max(4.5, 1.1 * len(tiers) * max(1, len(series) / 3)) * len(compartments),
                                      2.8 * len(metric_names)), squeeze=False)
    width = 0.8 / max(len(series), 1)
    colours = plt.get_cmap("tab10")
    for r_i, metric in enumerate(metric_names):
        for c_i, comp in enumerate(compartments):
            ax = axes[r_i, c_i]
            for s_i, (label, variant) in enumerate(series):
                rows = {r["tier"]: r for r in by_label[label] if r["compartment"] == comp and r["variant"] == variant}
                x = np.arange(len(tiers)) + (s_i - (len(series) - 1) / 2) * width
                y = np.array([rows[t][metric] if t in rows else np.nan for t in tiers]) * 100
                lo = np.array([rows[t][metric + "_ci_low"] if t in rows else np.nan for t in tiers]) * 100
                hi = np.array([rows[t][metric + "_ci_high"] if t in rows else np.nan for t in tiers]) * 100
                err = np.nan_to_num(np.stack([y - lo, hi - y]).clip(min=0))
                name = variant if len(by_label) == 1 else f"{label}: {variant}"
                ax.bar(x, y, width, yerr=err, capsize=2, label=name, color=colours(s_i % 10),
                       hatch=None if variant == "clean" else "//", edgecolor="white", linewidth=0.3)
            ax.set_xticks(np.arange(len(tiers)), tiers)
            ax.set_ylim(0, 100)
            ax.set_ylabel(f"{HEADLINE.get(metric, (None, metric))[1]} (%)")
            ax.set_title(f"{comp}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(" vs ".join(by_label) + ": score by density tier (95% bootstrap CI)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def compare_crowding(results_dirs, out_png, variants=("clean",)) -> Path | None:
    """Crowding curves of several results folders in one plot (their ``crowding.csv``).

    Only ``variants`` are drawn (default clean) so the methods stay readable; None draws all.
    Returns the plot's path, or None when no folder has crowding scores.
    """
    by_label = {}
    for d in results_dirs:
        rows = crowding.read_crowding(d)
        if not rows:
            continue
        run = json.loads((Path(d) / RUN).read_text()) if (Path(d) / RUN).exists() else {}
        label = _label(run) if run else Path(d).name
        while label in by_label:
            label += "'"
        by_label[label] = rows
    if not by_label:
        return None
    present = {r["variant"] for rows in by_label.values() for r in rows}
    keep = [v for v in variants if v in present] if variants else None
    return Path(crowding.plot_crowding(by_label, out_png, variants=keep or None))


def compare(results_dirs, out_png=None) -> tuple[str, list[dict]]:
    """Side-by-side table (and plot) of several results folders."""
    by_label, tiers, all_rows = {}, None, []
    for d in results_dirs:
        f = Path(d) / SUMMARY_FILE
        if not f.exists():
            raise CellgenError(f"{d} has no {SUMMARY_FILE}; run 'cellgen bench' into it first")
        data = json.loads(f.read_text())
        label = _label(data["run"])
        while label in by_label:
            label += "'"
        by_label[label] = data["summary"]
        tiers = tiers or data["tiers"]
        all_rows += [dict(r, method=label) for r in data["summary"]]
    all_rows.sort(key=lambda r: (r["compartment"] != "cell", r["variant"] != "clean", r["variant"],
                                 ([*tiers, "all"].index(r["tier"]) if r["tier"] in [*tiers, "all"] else 99)))
    if out_png:
        plot_summary(by_label, out_png, tiers)
    return format_table(all_rows, label_key="method"), all_rows
