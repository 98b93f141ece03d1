"""Input checks that run before any model work: garbage in gets a clear refusal, never a confident mask.

Every front end (command line, Slicer module, browser app) calls :func:`preflight` through the same
code, and :func:`~SPDSegmentLib.method.pipeline.segment` calls it again, so no path skips it. Each
refusal is its own exception class whose message says what is wrong and what to do.

What is refused and why:

=============================  =============================================================
``NonFiniteVoxels``            NaN/inf voxels: windowing turns the whole volume black, and SAM
                               then "segments" a blank image (``mask_nonfinite`` treats them as
                               the lowest intensity instead, with a warning)
``ConstantImage``              (nearly) one intensity everywhere: there is nothing to see
``NarrowWindow``               the intensity window leaves fewer than a few grey levels on the
                               slices the run looks at (e.g. a CT preset on an MRI)
``CenterlineOutsideVolume``    most of the centerline lies outside the volume (wrong space?)
``CenterlineInAir``            on CT, most centerline points lie in air (HU < -900)
``VolumeTooLarge``             the run would need more memory than the budget allows
=============================  =============================================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from ..volume import Volume
from .prompts import Centerline, prompt_extent, slice_prompts
from .windowing import volume_window

MIN_GREY_LEVELS = 8  # distinct 8-bit values on the processed slices below which SAM sees nothing
MAX_SATURATED_FRACTION = 0.995  # pixels at 0 or 255 after windowing
MIN_INSIDE_FRACTION = 0.5  # of the centerline's length that must lie inside the volume
MAX_AIR_FRACTION = 0.5  # of the inside points that may lie in air on CT
AIR_HU = -900.0
BYTES_PER_SLICE_PIXEL = 4 * 4 + 2  # saliency map + float copy + masks, per processed slice pixel
EMBEDDING_BYTES = 256 * 64 * 64 * 4  # one cached SAM embedding


class InputRefused(ValueError):
    """Base of the refusals below; ``code`` names the check for tables and tests."""

    code = "refused"


class NonFiniteVoxels(InputRefused):
    code = "non-finite-voxels"


class ConstantImage(InputRefused):
    code = "constant-image"


class NarrowWindow(InputRefused):
    code = "narrow-window"


class CenterlineOutsideVolume(InputRefused):
    code = "centerline-outside-volume"


class CenterlineInAir(InputRefused):
    code = "centerline-in-air"


class VolumeTooLarge(InputRefused):
    code = "volume-too-large"


def memory_budget_bytes() -> int:
    """``$SPDSEGMENT_MEMORY_GB`` (default 8 GB): the most a run may plan to hold in memory."""
    return int(float(os.environ.get("SPDSEGMENT_MEMORY_GB", "8")) * 1024 ** 3)


@dataclass
class Preflight:
    """What passed the checks: the volume to use (non-finite voxels replaced when asked) and warnings."""

    volume: Volume
    warnings: list[str] = field(default_factory=list)
    processed_slices: int = 0


def _slice_ranges(indices: np.ndarray) -> str:
    if len(indices) == 0:
        return "none"
    runs, start = [], indices[0]
    for a, b in pairwise(indices):
        if b != a + 1:
            runs.append((start, a))
            start = b
    runs.append((start, indices[-1]))
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:6])
    return text + (", ..." if len(runs) > 6 else "")


def check_finite(volume: Volume, mask_nonfinite: bool = False) -> tuple[Volume, list[str]]:
    finite = np.isfinite(volume.array) if volume.array.dtype.kind == "f" else None
    if finite is None or finite.all():
        return volume, []
    bad = int((~finite).sum())
    src_bad = volume.with_array((~finite).astype(np.uint8)).slices().reshape(volume.num_slices, -1).any(1)
    where = _slice_ranges(np.flatnonzero(src_bad))
    if not finite.any():
        raise ConstantImage(f"volume '{volume.name}': every voxel is NaN or infinite; the file holds no image "
                            "(check the export that made it)")
    if not mask_nonfinite:
        raise NonFiniteVoxels(
            f"volume '{volume.name}' has {bad} NaN/infinite voxels (slices {where}). They would turn the "
            "intensity window black. Fix the file, or ask to treat them as the lowest intensity "
            "(--mask-nonfinite on the command line, 'mask non-finite voxels' in the module)")
    filled = np.where(finite, volume.array, np.nanmin(np.where(finite, volume.array, np.inf)))
    return volume.with_array(filled.astype(volume.array.dtype)), [
        f"{bad} NaN/infinite voxels (slices {where}) were treated as the lowest intensity"]


def check_not_constant(volume: Volume) -> None:
    sample = volume.array[:: max(1, volume.array.shape[0] // 64)].astype(np.float64)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    scale = max(abs(lo), abs(hi), 1.0)
    if hi - lo <= 1e-6 * scale:
        raise ConstantImage(f"volume '{volume.name}' holds (nearly) one intensity everywhere ({lo:g}): there "
                            "is no image to segment. Is this the right file or series?")


def check_centerline(volume: Volume, centerline: Centerline, step_mm: float = 1.0) -> np.ndarray:
    """Refuse a centerline that mostly misses the volume; returns the inside points as continuous
    (slice, row, col), sampled every ``step_mm`` along a curve.

    A curve longer than a cropped volume is fine: only the part within the volume's slice range is
    judged, and most of that part must lie inside the slices (a curve in another coordinate system,
    e.g. LPS read as RAS, lands beside the body)."""
    pts = centerline.path_ras()
    if centerline.ordered and len(pts) > 1:
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        arc = np.r_[0.0, np.cumsum(seg)]
        if arc[-1] > 0:
            s = np.linspace(0, arc[-1], max(2, int(arc[-1] / step_mm) + 1))
            pts = np.stack([np.interp(s, arc, pts[:, d]) for d in range(3)], axis=1)
    src = volume.ras_to_src(pts)
    shape = np.array([volume.num_slices, *volume.slice_shape])
    in_range = (src[:, 0] >= -0.5) & (src[:, 0] <= shape[0] - 0.5)
    inside = np.all((src >= -0.5) & (src <= shape - 0.5), axis=1)
    if not in_range.any():
        raise CenterlineOutsideVolume(
            f"the centerline '{centerline.name}' does not pass through the volume '{volume.name}' (it misses all "
            "its slices). Check that both are in the same space (a parent transform not applied?) and belong to "
            "the same scan")
    fraction = float(inside[in_range].mean())
    if fraction < MIN_INSIDE_FRACTION:
        raise CenterlineOutsideVolume(
            f"only {100 * fraction:.0f}% of the centerline '{centerline.name}' (on the volume's slices) lies inside "
            f"the volume '{volume.name}'. Check that both are in the same space: a parent transform not applied, or a "
            "file saved in another coordinate system (LPS vs RAS)")
    return src[inside]


def check_not_in_air(volume: Volume, inside_src: np.ndarray, centerline_name: str) -> None:
    if volume.guessed_modality() != "CT" or len(inside_src) == 0:
        return
    idx = np.clip(np.round(inside_src).astype(int), 0, np.array([volume.num_slices, *volume.slice_shape]) - 1)
    values = volume.slices()[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    air = float((values < AIR_HU).mean())
    if air > MAX_AIR_FRACTION:
        raise CenterlineInAir(
            f"{100 * air:.0f}% of the centerline '{centerline_name}' lies in air (below {AIR_HU:.0f} HU) in "
            f"'{volume.name}'. The points are probably in another coordinate system or on another scan")


def check_window(volume: Volume, slices: list[int], preset: str) -> None:
    window = volume_window(volume, preset)
    src = volume.slices()
    step = max(1, len(slices) // 16)
    pixels = np.concatenate([window.apply(src[t]).ravel() for t in slices[::step]])
    levels = len(np.unique(pixels))
    saturated = float(np.mean((pixels == 0) | (pixels == 255)))
    if levels < MIN_GREY_LEVELS or saturated > MAX_SATURATED_FRACTION:
        lo, hi = np.percentile(np.concatenate([src[t].ravel() for t in slices[::step]]), [1, 99])
        raise NarrowWindow(
            f"the intensity window '{window.preset}' ({window.low:g} to {window.high:g}) leaves {levels} grey "
            f"levels on the slices around the centerline, whose intensities run from {lo:g} to {hi:g}: SAM "
            "would see a blank image. Choose another intensity preset (e.g. 'mri' for non-CT data, or 'auto')")


def check_memory(volume: Volume, processed: int, budget: int | None = None) -> None:
    budget = memory_budget_bytes() if budget is None else budget
    rows, cols = volume.slice_shape
    need = volume.array.nbytes * 2 + processed * (rows * cols * BYTES_PER_SLICE_PIXEL + EMBEDDING_BYTES)
    if need > budget:
        raise VolumeTooLarge(
            f"this run would hold about {need / 1024 ** 3:.1f} GB ({processed} slices of {rows}x{cols}), over the "
            f"memory budget of {budget / 1024 ** 3:.1f} GB. Crop the volume to the structure (Crop Volume module), "
            "shorten the centerline, or raise SPDSEGMENT_MEMORY_GB if this computer has the memory")


def preflight(volume: Volume, centerline: Centerline, params, mask_nonfinite: bool = False,
              memory_budget: int | None = None) -> Preflight:
    """Run every check, cheapest first; raise the first refusal. ``params`` is a SegmentParams."""
    volume, warnings = check_finite(volume, mask_nonfinite)
    check_not_constant(volume)
    inside = check_centerline(volume, centerline)
    check_not_in_air(volume, inside, centerline.name)
    prompts = slice_prompts(centerline, volume, params.group_distance_mm)
    if not prompts:
        raise CenterlineOutsideVolume(
            f"the centerline '{centerline.name}' gives no point on any slice of '{volume.name}': check that "
            "both are in the same space (parent transforms?)")
    processed = list(prompt_extent(prompts, params.context, volume.num_slices))
    check_window(volume, processed, params.intensity_preset)
    check_memory(volume, len(processed), memory_budget)
    return Preflight(volume, warnings, len(processed))
