"""Appearance gate: trim a SAM-derived prior to the tissue that looks like the centerline's points.

SAM's masks follow edges, not intensities, and a mask started on a small vessel or a bowel loop
often runs into the bright fat or the organ beside it (on the MR cases the tracked objects' precision
was 0.01-0.15 on the duodenum, the aorta and the portal vein at clinical noise, docs/method.md). The centerline
itself says what the target looks like: most of its points lie on it, so the robust statistics of
their intensities (median, 1.4826 x MAD) describe the target even when a stretch has drifted. A
pixel of the prior stays salient only if its lightly smoothed intensity lies within ``spread``
robust spreads of that median; holes left inside a region (a vessel inside an organ) are filled
back.

Structures whose content varies (a colon with air and stool, a dissected aorta with a thrombosed
lumen) would lose the part the median does not describe. The centerline runs through such parts
too, so a removed piece that holds one of the slice's own points is put back, unless it is larger
than what the gate kept on that slice (``restore_limit``). Content of another look inside the
structure is a part of it; a larger piece under a point is the neighbour a drifted point fell on
(the liver or the fat beside a vein), and putting it back undid the gate where the noise is worst
(docs/method.md, "The appearance gate").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .prompts import PromptPoint, SlicePrompts


@dataclass(frozen=True)
class AppearanceGate:
    """How strict the gate is. ``spread``: robust spreads around the points' median intensity."""

    spread: float = 2.5  # the one value tried (the intensity prior's Gaussian halves at 2.35 of its spreads)
    smoothing_px: float = 0.75  # as the intensity prior: one noisy voxel does not punch a hole
    min_sigma_fraction: float = 0.03  # of the volume's 1-99 % range: a floor, as the intensity prior's
    tau: float = 0.5  # what counts as salient in the map it trims: the continuity prior's maps are 0 / 1
    restore_limit: float | None = 1.0  # a removed piece under a point is put back up to this many times the
    #                                    kept area of its slice (None: whatever its size, the earlier rule)

    def __post_init__(self) -> None:
        if not self.spread > 0:
            raise ValueError(f"the appearance gate's spread must be positive, got {self.spread}")
        if self.restore_limit is not None and not self.restore_limit >= 0:
            raise ValueError(f"the appearance gate's restore_limit must be >= 0 or None, got {self.restore_limit}")


def point_intensity_model(slices: np.ndarray, prompts: SlicePrompts, min_sigma_fraction: float) -> tuple[float, float]:
    """Median and robust spread of the intensities at the prompt points (3x3 medians, so one
    noisy voxel does not decide); the spread is floored at a fraction of the volume's 1-99 %
    intensity range so a perfectly uniform sample does not give a zero-width model."""
    values = []
    for s, points in prompts.items():
        img = slices[s]
        for p in points:
            r, c = p.pixel
            values.append(float(np.median(img[max(0, r - 1): r + 2, max(0, c - 1): c + 2])))
    if not values:
        raise ValueError("the appearance model needs at least one prompt point")
    values_arr = np.asarray(values)
    mu = float(np.median(values_arr))
    sigma = 1.4826 * float(np.median(np.abs(values_arr - mu)))
    sample = slices[:: max(1, len(slices) // 32)]
    lo, hi = np.percentile(sample, [1, 99])
    return mu, max(sigma, min_sigma_fraction * float(hi - lo), 1e-3)


def gate_slice(saliency: np.ndarray, image: np.ndarray, own_points: Sequence[PromptPoint], mu: float, sigma: float,
               gate: AppearanceGate) -> np.ndarray:
    """One slice's map, trimmed (float32, 1 on what stays salient, 0 elsewhere)."""
    salient = saliency > gate.tau
    if not salient.any():
        return np.zeros(saliency.shape, dtype=np.float32)
    smooth = ndimage.gaussian_filter(image.astype(np.float32), gate.smoothing_px)
    alike = np.abs(smooth - mu) <= gate.spread * sigma
    kept = ndimage.binary_fill_holes(salient & alike) & salient
    removed, _ = ndimage.label(salient & ~kept)
    held = {int(removed[p.pixel]) for p in own_points} - {0}
    if gate.restore_limit is not None:  # measured on the kept area before any piece is put back
        sizes, limit = np.bincount(removed.ravel()), gate.restore_limit * float(kept.sum())
        held = {k for k in held if sizes[k] <= limit}
    if held:
        kept |= np.isin(removed, sorted(held))
    return kept.astype(np.float32)


def gate_maps(maps: dict[int, np.ndarray], slices: np.ndarray, prompts: SlicePrompts,
              gate: AppearanceGate) -> tuple[dict[int, np.ndarray], dict[str, float]]:
    """Every slice's map gated; also the model and the fraction of salient pixels removed."""
    mu, sigma = point_intensity_model(slices, prompts, gate.min_sigma_fraction)
    out: dict[int, np.ndarray] = {}
    before = after = 0
    for t, m in maps.items():
        out[t] = gate_slice(m, slices[t], prompts.get(t, []), mu, sigma, gate)
        before += int((m > gate.tau).sum())
        after += int(out[t].sum())
    return out, {"mu": mu, "sigma": sigma, "removed_fraction": 1.0 - after / before if before else 0.0}
