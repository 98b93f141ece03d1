"""PNG overlays for a radiologist's quick look: slices with the mask, the label (when known) and the
prompts coloured by what CPD did with them (kept / rejected / borrowed / fallback)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

STATUS_COLORS = {"kept": "#33dd33", "rejected": "#ff3333", "borrowed": "#33ccff", "fallback": "#ffdd00"}


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
    fig.suptitle(f"{title}\n{legend}" if title else legend, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
