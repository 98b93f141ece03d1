"""Segmentation metrics with physical spacing.

* ``dsc`` / ``iou``: 3D overlap over the whole volume.
* ``hd95_mm`` / ``asd_mm``: 95th-percentile and average symmetric surface distance in mm, from
  surface voxels (6-connected boundary) and exact Euclidean distance transforms with voxel spacing.
* ``volumetric_dsc``: volume agreement ``1 - |Vp - Vg| / (Vp + Vg)`` (insensitive to position).
* ``slice_dsc``: mean 2D Dice over slices where the label or the prediction is non-empty.
Empty-mask conventions (fixed, so tables are comparable): both empty -> overlap 1, distances 0;
exactly one empty -> overlap 0, distances ``inf`` (reported as such, never silently dropped).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _binary(a: np.ndarray) -> np.ndarray:
    return np.asarray(a) > 0


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = _binary(pred), _binary(ref)
    total = p.sum() + r.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(p, r).sum() / total)


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = _binary(pred), _binary(ref)
    union = np.logical_or(p, r).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, r).sum() / union)


def volumetric_similarity(pred: np.ndarray, ref: np.ndarray) -> float:
    vp, vr = float(_binary(pred).sum()), float(_binary(ref).sum())
    return 1.0 if vp + vr == 0 else 1.0 - abs(vp - vr) / (vp + vr)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> np.ndarray | None:
    """Distances (mm) from each surface voxel of either mask to the other mask's surface."""
    p, r = _binary(pred), _binary(ref)
    if not p.any() or not r.any():
        return None
    sp, sr = _surface(p), _surface(r)
    dist_to_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return np.concatenate([dist_to_r[sp], dist_to_p[sr]])


def _distance_summary(pred, ref, spacing, summary) -> float:
    p_any, r_any = _binary(pred).any(), _binary(ref).any()
    if not p_any and not r_any:
        return 0.0
    d = surface_distances(pred, ref, spacing)
    return float("inf") if d is None else float(summary(d))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    return _distance_summary(pred, ref, spacing, lambda d: np.percentile(d, 95))


def hausdorff(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    return _distance_summary(pred, ref, spacing, np.max)


def asd(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    return _distance_summary(pred, ref, spacing, np.mean)


def per_slice_dice(pred_slices: np.ndarray, ref_slices: np.ndarray) -> dict[int, float]:
    """Dice of each slice (axis 0) where the label or the prediction is non-empty."""
    out = {}
    for t in range(len(ref_slices)):
        if ref_slices[t].any() or pred_slices[t].any():
            out[t] = dice(pred_slices[t], ref_slices[t])
    return out


def evaluate(pred_slices: np.ndarray, ref_slices: np.ndarray, spacing_src) -> dict[str, float]:
    """All metrics for ``[slice, row, col]`` masks; ``spacing_src`` = (slice, row, col) mm."""
    per_slice = per_slice_dice(pred_slices, ref_slices)
    return {
        "dsc": dice(pred_slices, ref_slices),
        "iou": iou(pred_slices, ref_slices),
        "hd95_mm": hd95(pred_slices, ref_slices, spacing_src),
        "asd_mm": asd(pred_slices, ref_slices, spacing_src),
        "volumetric_dsc": volumetric_similarity(pred_slices, ref_slices),
        "slice_dsc": float(np.mean(list(per_slice.values()))) if per_slice else 1.0,
    }
