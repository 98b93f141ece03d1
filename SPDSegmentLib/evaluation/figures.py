"""PNG overlays for a radiologist's quick look: slices with the mask, the label (when known) and the
prompts coloured by what CPD did with them (kept / rejected / borrowed / fallback)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import dice

STATUS_COLORS = {"kept": "#33dd33", "rejected": "#ff3333", "borrowed": "#33ccff", "fallback": "#ffdd00",
                 "propagated": "#bb77ff"}


def _save(fig, path: str | Path, title: str, legend: str, fontsize: int, dpi: int, colors: int = 96) -> Path:
    """Title + legend, tight layout, write the PNG as a palette image of ``colors`` colours (about a
    third of the bytes of a full-colour PNG, so report figures stay small), free the figure."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    fig.suptitle(f"{title}\n{legend}" if title else legend, fontsize=fontsize)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=colors).save(path, optimize=True)
    return path


def pick_slices(result, count: int = 6) -> list[int]:
    """Evenly spread slices that have prompts or mask, favouring ones with rejected points."""
    candidates = [t for t in result.processed_slices if result.decisions[t].points]
    if not candidates:
        return result.processed_slices[:count]
    rejected = [t for t in candidates if result.decisions[t].with_status("rejected")]
    chosen = list(np.array(rejected)[np.linspace(0, len(rejected) - 1, min(len(rejected), count // 2)).astype(int)]) \
        if rejected else []
    rest = [t for t in candidates if t not in chosen]
    need = count - len(chosen)
    if rest and need > 0:
        chosen += list(np.array(rest)[np.linspace(0, len(rest) - 1, min(len(rest), need)).astype(int)])
    return sorted(int(t) for t in set(chosen))


def overlay_png(result, path: str | Path, label_kji: np.ndarray | None = None, slices: list[int] | None = None,
                window: tuple[float, float] | None = None, title: str = "", others: dict | None = None) -> Path:
    """Write a panel: one column per slice; the image with the SPD mask (red), the label (green),
    optional other masks (``others``: name -> ``[k, j, i]`` mask, dashed), and the prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume = result.volume
    slices = slices or pick_slices(result)
    images = volume.slices()
    mask = volume.with_array(result.mask).slices()
    label = volume.with_array(label_kji).slices() if label_kji is not None else None
    other = {k: volume.with_array(v).slices() for k, v in (others or {}).items()}
    lo, hi = window or (float(np.percentile(images[slices], 1)), float(np.percentile(images[slices], 99)))
    fig, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.6), squeeze=False)
    for ax, t in zip(axes[0], slices):
        ax.imshow(np.clip(images[t], lo, hi), cmap="gray", vmin=lo, vmax=hi)
        if label is not None and label[t].any():
            ax.contour(label[t], [0.5], colors="#00ff66", linewidths=1.0)
        for (name, m), color in zip(other.items(), ["#ffaa00", "#cc66ff"]):
            if m[t].any():
                ax.contour(m[t], [0.5], colors=color, linewidths=0.8, linestyles="dashed")
        if mask[t].any():
            ax.contour(mask[t], [0.5], colors="#ff3333", linewidths=1.0)
        for p in result.decisions[t].points:
            ax.plot(p.col, p.row, marker="x" if p.status == "rejected" else "+", color=STATUS_COLORS[p.status],
                    markersize=7, mew=1.5)
        ax.set_title(f"slice {t}", fontsize=9)
        ax.axis("off")
    legend = "mask: red; label: green" + "".join(f"; {n}: dashed" for n in other) + \
             " | prompts: kept green +, rejected red x, borrowed blue +, fallback yellow +"
    return _save(fig, path, title, legend, fontsize=9, dpi=110)


def panel_slices(label_src: np.ndarray, first: np.ndarray, second: np.ndarray, decisions: dict,
                 count: int = 3) -> list[int]:
    """Slices that tell the story of a case: where two methods' masks differ most on the label,
    where CPD rejected the most points (a drift), and a slice the structure was carried into
    without a trusted point (a gap or a rejected stretch filled)."""
    on_label = [t for t in range(len(label_src)) if label_src[t].any()]
    if not on_label:
        return []
    chosen = [max(on_label, key=lambda t: abs(dice(first[t], label_src[t]) - dice(second[t], label_src[t])))]
    rejected = {t: len(d.with_status("rejected")) for t, d in decisions.items() if t in on_label}
    if rejected and max(rejected.values()) > 0:
        chosen.append(max(rejected, key=rejected.get))
    filled = [t for t, d in decisions.items() if t in on_label and "propagated" in d.flags and second[t].any()]
    if filled:
        chosen.append(max(filled, key=lambda t: dice(second[t], label_src[t])))
    for t in np.linspace(on_label[0], on_label[-1], count + 2).astype(int)[1:-1]:
        if len(set(chosen)) >= count:
            break
        chosen.append(int(t))
    return sorted(set(chosen))[:count]


def _crop(label_t: np.ndarray, points_rc: list, spacing: tuple[float, float], margin_mm: float = 35.0):
    rc = np.argwhere(label_t)
    if points_rc:
        rc = np.vstack([rc, np.asarray(points_rc, dtype=float)]) if len(rc) else np.asarray(points_rc, dtype=float)
    if not len(rc):
        return slice(None), slice(None)
    margin = np.ceil(margin_mm / np.asarray(spacing)).astype(int)
    lo = np.maximum(np.floor(rc.min(0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(rc.max(0)).astype(int) + margin + 1, label_t.shape)
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def method_panel_png(volume, label: np.ndarray, src_masks: dict[str, np.ndarray], decisions: dict[str, dict],
                     boxes: dict[str, dict], path: str | Path, slices: list[int], title: str = "",
                     window: tuple[float, float] | None = None) -> Path:
    """One row per slice, one column per method: the method's mask (red) against the label (green),
    zoomed on the structure, with that method's prompts: CPD status per point (kept green +, rejected
    red x, borrowed blue +, fallback yellow +) or its boxes (yellow), and the slice Dice. ``label`` and
    ``src_masks`` are boolean and in slice order (``volume.slices()``), as the report already has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    images = volume.slices()
    names = list(src_masks)
    lo, hi = window or (float(np.percentile(images[slices], 1)), float(np.percentile(images[slices], 99)))
    fig, axes = plt.subplots(len(slices), len(names), figsize=(2.2 * len(names), 2.5 * len(slices)), squeeze=False)
    for row, t in zip(axes, slices):
        all_points = [(p.row, p.col) for d in decisions.values() if t in d for p in d[t].points]
        rows, cols = _crop(label[t], all_points, volume.in_plane_spacing)
        for ax, name in zip(row, names):
            # nearest: the scan's own pixels, and less than half the bytes of a smoothed resampling
            ax.imshow(np.clip(images[t][rows, cols], lo, hi), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            off = np.array([rows.start or 0, cols.start or 0])
            if label[t].any():
                ax.contour(label[t][rows, cols], [0.5], colors="#00ff66", linewidths=0.9)
            if src_masks[name][t].any():
                ax.contour(src_masks[name][t][rows, cols], [0.5], colors="#ff3333", linewidths=0.9)
            for r0, c0, r1, c1 in boxes.get(name, {}).get(t, []):
                ax.add_patch(Rectangle((c0 - off[1], r0 - off[0]), c1 - c0, r1 - r0, fill=False, ec="#ffdd00", lw=0.8))
            if name in decisions and t in decisions[name]:
                for p in decisions[name][t].points:
                    ax.plot(p.col - off[1], p.row - off[0], marker="x" if p.status == "rejected" else "+",
                            color=STATUS_COLORS[p.status], markersize=6, mew=1.3)
            ax.set_title(f"{name}\nslice {t}: Dice {dice(src_masks[name][t], label[t]):.2f}", fontsize=7)
            ax.axis("off")
    legend = "mask red, label green; prompts: kept green +, rejected red x, borrowed blue +, fallback yellow +"
    if any(boxes.get(name) for name in names):
        legend += "; boxes yellow"
    return _save(fig, path, title, legend, fontsize=8, dpi=90)
