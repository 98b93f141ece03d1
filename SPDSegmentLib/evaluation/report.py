"""report.md and figures of an evaluation run: headline table (raw vs SPD per severity), per-case
tables, paired Wilcoxon signed-rank tests of SPD vs each baseline, bar chart, Dice vs severity and
overlay panels."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .figures import method_panel_png, panel_slices


def _mean_sd(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def wilcoxon_vs(rows: list[dict], reference: str, other: str, severity: str, metric: str = "dsc") -> tuple[int, float | None]:
    """(number of paired cases, p-value) of a two-sided Wilcoxon signed-rank test, reference vs other."""
    from scipy.stats import wilcoxon

    a = {r["case"]: r[metric] for r in rows if r["method"] == reference and r["severity"] == severity}
    b = {r["case"]: r[metric] for r in rows if r["method"] == other and r["severity"] == severity}
    common = sorted(set(a) & set(b))
    diffs = np.array([a[c] - b[c] for c in common])
    if len(common) < 2 or np.allclose(diffs, 0):
        return len(common), None
    return len(common), float(wilcoxon(diffs).pvalue)


def _figures(rows, out: Path, severities) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    files = []
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.5))
    width = 0.8 / len(severities)
    for i, sev in enumerate(severities):
        means = [np.mean([r["dsc"] for r in rows if r["method"] == m and r["severity"] == sev]) for m in methods]
        ax.bar(np.arange(len(methods)) + i * width, means, width, label=sev)
    ax.set_xticks(np.arange(len(methods)) + width * (len(severities) - 1) / 2, methods, rotation=30, ha="right")
    ax.set_ylabel("mean DSC")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dsc_by_method.png", dpi=110)
    plt.close(fig)
    files.append("dsc_by_method.png")
    if len(severities) > 1:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for m in methods:
            ax.plot(severities, [np.mean([r["dsc"] for r in rows if r["method"] == m and r["severity"] == s])
                                 for s in severities], marker="o", label=m)
        ax.set_ylabel("mean DSC")
        ax.set_xlabel("noise severity")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "dsc_vs_severity.png", dpi=110)
        plt.close(fig)
        files.append("dsc_vs_severity.png")
    return files


def method_panel(art: dict, out: Path, case: str, severity: str) -> str | None:
    """Draw the per-method panel of one case and severity; returns the PNG's name."""
    results, masks = art["results"], art["masks"]
    if "spd" not in results or "raw" not in masks:
        return None
    volume = art["volume"]
    label_src = volume.with_array(art["label"]).slices().astype(bool)
    src = {k: volume.with_array(v).slices().astype(bool) for k, v in masks.items()}
    slices = panel_slices(label_src, src["raw"], src["spd"], results["spd"].decisions)
    if not slices:
        return None
    decisions = {k: r.decisions for k, r in results.items()}
    if "box" in masks and "raw" in results:
        decisions["box"] = results["raw"].decisions  # the points its boxes were drawn around
    png = f"panel_{case}_{severity}.png"
    method_panel_png(volume, label_src, src, decisions, art.get("boxes", {}), out / png, slices,
                     title=f"{case} ({severity})")
    return png


def trained_prior_lines(rows: list[dict], artefacts: dict, severities) -> list[str]:
    """Trained prior vs training-free prior vs raw prompts, per case with the case's role for the
    trained prior; means over held-out cases only (training and validation cases are shown, never
    averaged in)."""
    roles = {case: art.get("prior_role") for (case, _), art in artefacts.items() if art.get("prior_role")}
    if not roles:
        return []
    dsc = {(r["case"], r["severity"], r["method"]): r["dsc"] for r in rows}
    lines = ["## Trained prior vs training-free prior vs raw prompts", "",
             "Cases of the structure the trained prior was made for. Only held-out cases enter the means.", "",
             "| case | role | severity | raw | spd (training-free) | spd-trained |", "|---|---|---|---|---|---|"]
    for sev in severities:
        for case, role in roles.items():
            vals = [dsc.get((case, sev, m), float("nan")) for m in ("raw", "spd", "spd-trained")]
            lines.append(f"| {case} | {role} | {sev} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    for sev in severities:
        held = [c for c, role in roles.items() if role == "held-out"]
        means = [np.nanmean([dsc.get((c, sev, m), np.nan) for c in held]) if held else np.nan
                 for m in ("raw", "spd", "spd-trained")]
        lines.append(f"| **mean of {len(held)} held-out** | | {sev} | " + " | ".join(f"**{v:.3f}**" for v in means) + " |")
    return lines + [""]


def write_report(rows: list[dict], artefacts: dict, cases, config, out: Path) -> Path:
    severities = list(config.severities)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["# SPDSegment evaluation", "",
             f"Backend: frozen SAM (identity in config.json); prior `{config.prior}`; second prior "
             f"`{config.second_prior or 'intensity'}`; τ {config.tau or 'prior default'}; n = {config.context}; "
             f"seed {config.seed}.",
             "Scores are agreement with the case labels (for the bundled data: TotalSegmentator output, "
             "not manual tracings).", "", "## Headline: raw prompts vs SPD (mean ± sd DSC over cases)", "",
             "| severity | cases | raw | spd | spd − raw | Wilcoxon p |", "|---|---|---|---|---|---|"]
    for sev in severities:
        raw = [r["dsc"] for r in rows if r["method"] == "raw" and r["severity"] == sev]
        spd = [r["dsc"] for r in rows if r["method"] == "spd" and r["severity"] == sev]
        n, p = wilcoxon_vs(rows, "spd", "raw", sev)
        diff = (np.mean(spd) - np.mean(raw)) if raw and spd else float("nan")
        lines.append(f"| {sev} | {n} | {_mean_sd(raw)} | {_mean_sd(spd)} | {100 * diff:+.1f} pts | "
                     f"{'n/a' if p is None else f'{p:.3g}'} |")
    lines += ["", "## All methods", ""]
    for sev in severities:
        lines += [f"### {sev}", "", "| method | DSC | IoU | HD95 mm | ASD mm | vol. agreement | slice DSC | "
                  "SPD vs method: n, p |", "|---|---|---|---|---|---|---|---|"]
        for m in methods:
            sub = [r for r in rows if r["method"] == m and r["severity"] == sev]
            n, p = wilcoxon_vs(rows, "spd", m, sev) if m != "spd" else (len(sub), None)
            lines.append(f"| {m} | {_mean_sd([r['dsc'] for r in sub])} | {_mean_sd([r['iou'] for r in sub])} | "
                         f"{_mean_sd([r['hd95_mm'] for r in sub])} | {_mean_sd([r['asd_mm'] for r in sub])} | "
                         f"{_mean_sd([r['volumetric_dsc'] for r in sub])} | {_mean_sd([r['slice_dsc'] for r in sub])} | "
                         f"{n}, {'—' if p is None else f'{p:.3g}'} |")
        if "spd-trained" in methods:
            lines.append("\nspd-trained runs only on cases of its structure, including the ones it was trained "
                         "on: compare it on held-out cases only (section below).")
        lines.append("")
    lines += ["## Per case (DSC)", "", "| case | severity | " + " | ".join(methods) + " |",
              "|---|---|" + "---|" * len(methods)]
    by = defaultdict(dict)
    for r in rows:
        by[(r["case"], r["severity"])][r["method"]] = r["dsc"]
    for (case, sev), d in by.items():
        lines.append(f"| {case} | {sev} | " + " | ".join(f"{d[m]:.3f}" if m in d else "—" for m in methods) + " |")
    lines += [""] + trained_prior_lines(rows, artefacts, severities)
    lines += ["## Cases and sources", "", "| case | structure | source | licence |", "|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c.name} | {c.info.get('structure', '?')} | {c.info.get('source', str(c.image))} | "
                     f"{c.info.get('license', 'as provided')} |")
    lines += ["", "## Noise model", "",
              "Project's own model (`SPDSegmentLib/noise.py`): skeleton path → sampled points → smooth "
              "jitter, drift runs moved off the structure, gaps, distractors; parameters per severity:", ""]
    from .noise import SEVERITIES

    for sev in severities:
        lines.append(f"- **{sev}**: `{SEVERITIES[sev].as_dict()}`")
    lines += ["", "## Figures", ""]
    for f in _figures(rows, out, severities):
        lines.append(f"![{f}]({f})")
    lines += ["", "## Overlay panels", "",
              "Per case and severity: one column per method (its mask in red, the label in green, its own "
              "prompts: CPD status per point, or its boxes), on the slice where raw and SPD differ most and "
              "on the slice where CPD rejected most points.", ""]
    for (case, sev), art in artefacts.items():
        png = method_panel(art, out, case, sev)
        if png:
            lines.append(f"![{png}]({png})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
