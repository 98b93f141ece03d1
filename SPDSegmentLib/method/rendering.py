"""Prompt rendering: how a slice's consensus points are shown to a given SAM backend.

Box backends (LiteMedSAM ignores point-only prompts): points are grouped by the connected region of
``S_t > tau`` they fall in; each group becomes one box spanning its region (limited to a few
structure radii around its points) and its points, plus a margin. Points on non-salient pixels
(raw baseline, peak fallback) are grouped by proximity and get a box of the structure's typical
size measured from the saliency maps - never a constant. Each box is decoded separately; the masks
are united. Point backends get each group's points (optionally with the box).

Measured on the CTA demo slices: LiteMedSAM with box+points scored lower than box alone, so box
backends use boxes only by default.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform


@dataclass(frozen=True)
class RenderedPrompt:
    points_rc: np.ndarray  # (N, 2) row, col
    box_rc: tuple[float, float, float, float] | None  # r0, c0, r1, c1 (inclusive pixel bounds)


def _box(region_rc: np.ndarray, shape: tuple[int, int], margin_px: float) -> tuple[float, float, float, float]:
    r0, c0 = region_rc.min(0) - margin_px
    r1, c1 = region_rc.max(0) + margin_px
    return (float(max(r0, 0)), float(max(c0, 0)), float(min(r1, shape[0] - 1)), float(min(c1, shape[1] - 1)))


RADIUS_STEP_PX = 0.5  # the structure radius is rounded to this: boxes do not change with every moved point


DEFAULT_RADIUS_MM = 10.0  # a structure's radius where no point lies on the prior's region


def structure_radius_px(saliency: dict[int, np.ndarray], points: dict[int, list], tau: float,
                        default_px: float) -> float:
    """Typical radius (px) of the structure: the interquartile mean of the distances from the
    prompt points to the edge of the salient region holding them, rounded to ``RADIUS_STEP_PX``.

    Inscribed distances stay right when a region leaks into a neighbour of similar appearance,
    unlike region areas. The radius sizes every box of the run, so it must not jump when one point
    moves: a median of pixel distances takes few distinct values (3, 3.16, 3.61 px ...) and stepped
    from one to the next after a single drag, re-sizing all 43 slices' boxes. The interquartile mean
    moves by hundredths of a pixel for one point, and the rounding absorbs that."""
    radii = []
    for t, pts in points.items():
        if t not in saliency or not pts:
            continue
        inside = ndimage.distance_transform_edt(saliency[t] > tau)
        radii.extend(float(inside[p.pixel]) for p in pts if inside[p.pixel] > 0)
    if not radii:
        return default_px
    values = np.sort(np.asarray(radii))
    quarter = len(values) // 4
    middle = values[quarter: len(values) - quarter]  # never empty
    return max(RADIUS_STEP_PX, RADIUS_STEP_PX * round(float(middle.mean()) / RADIUS_STEP_PX))


def run_radius_px(saliency: dict[int, np.ndarray], points: dict[int, list], tau: float, spacing_px: float) -> float:
    """The run's structure radius (px) as the pipeline sizes its boxes: :func:`structure_radius_px`,
    falling back to ``DEFAULT_RADIUS_MM`` where no point lies on the prior's region. One place, so the
    pipeline, its borrowing window and decoder training measure the radius alike."""
    return structure_radius_px(saliency, points, tau, default_px=DEFAULT_RADIUS_MM / spacing_px)


def render(points: list, saliency: np.ndarray, tau: float, radius_px: float, mode: str = "box",
           with_points: bool = False, margin_fraction: float = 0.1, min_margin_px: float = 2.0,
           reach: float = 1.75) -> list[RenderedPrompt]:
    """Prompts for one slice. ``points`` have ``row``, ``col`` and ``pixel``."""
    if not points:
        return []
    shape = saliency.shape
    labels, _ = ndimage.label(saliency > tau)
    regions: dict[int, list] = {}
    loose = []
    for p in points:
        lab = int(labels[p.pixel])
        if lab:
            regions.setdefault(lab, []).append(p)
        else:
            loose.append(p)

    rr, cc = np.mgrid[: shape[0], : shape[1]]
    out = []
    for lab, pts in regions.items():
        rc = np.array([[p.row, p.col] for p in pts])
        near = np.zeros(shape, dtype=bool)
        for r, c in rc:
            near |= (rr - r) ** 2 + (cc - c) ** 2 <= (reach * radius_px) ** 2
        extent = np.vstack([np.argwhere((labels == lab) & near), rc])
        out.append(_prompt(rc, extent, shape, mode, with_points, margin_fraction, min_margin_px))
    # points off the salient region: boxes of the structure's size around them
    return out + point_boxes(loose, shape, radius_px, mode, with_points, margin_fraction, min_margin_px)


def point_boxes(points: list, shape: tuple[int, int], radius_px: float, mode: str = "box",
                with_points: bool = False, margin_fraction: float = 0.1,
                min_margin_px: float = 2.0) -> list[RenderedPrompt]:
    """Prompts sized from the points alone, whatever the prior shows: points within two structure
    radii form a group, and each group gets a box of the structure's radius around its points (what
    ``render`` gives points off the salient region). The leak limit decodes a slice again from these
    when the prior's region led SAM onto a neighbour."""
    out = []
    for group in _proximity_groups(points, radius_px):
        rc = np.array([[p.row, p.col] for p in group])
        extent = np.vstack([rc - radius_px, rc + radius_px])
        out.append(_prompt(rc, extent, shape, mode, with_points, margin_fraction, min_margin_px))
    return out


def _proximity_groups(points: list, radius_px: float) -> list[list]:
    """``points`` grouped by proximity: chains of points closer than two structure radii."""
    if not points:
        return []
    if len(points) == 1:
        return [list(points)]
    rc = np.array([[p.row, p.col] for p in points])
    _, ids = connected_components(squareform(pdist(rc)) < 2 * radius_px, directed=False)
    groups: dict[int, list] = {}
    for p, g in zip(points, ids):
        groups.setdefault(int(g), []).append(p)
    return list(groups.values())


def _prompt(rc: np.ndarray, extent: np.ndarray, shape: tuple[int, int], mode: str, with_points: bool,
            margin_fraction: float, min_margin_px: float) -> RenderedPrompt:
    """One group's prompt: a box over ``extent`` plus a margin, with or without the group's points."""
    size = float(np.max(extent.max(0) - extent.min(0)))
    box = _box(extent, shape, max(min_margin_px, margin_fraction * size))
    if mode == "box":
        return RenderedPrompt(rc if with_points else np.empty((0, 2)), box)
    return RenderedPrompt(rc, box if with_points else None)


def region_prompts(saliency: np.ndarray, tau: float, mode: str = "box", min_area_px: int = 4,
                   margin_fraction: float = 0.1, min_margin_px: float = 2.0,
                   max_radius_px: float | None = None) -> list[RenderedPrompt]:
    """Prompts for a slice with no consensus point: one box per salient region (the prior's view of
    the structure there, e.g. carried through a gap or a rejected drift by the continuity step).
    Point backends get the region's innermost pixel as a point as well. A region whose inscribed
    radius exceeds ``max_radius_px`` is not this structure (a neighbour many times thicker) and
    gets no prompt."""
    labels, _ = ndimage.label(saliency > tau)
    out = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        region = labels[sl] == index
        if region.sum() < min_area_px:
            continue
        inside = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]  # the box's edge is background
        if max_radius_px is not None and float(inside.max()) > max_radius_px:
            continue
        extent = np.array([[sl[0].start, sl[1].start], [sl[0].stop - 1, sl[1].stop - 1]], dtype=float)
        size = float(np.max(extent[1] - extent[0]))
        box = _box(extent, saliency.shape, max(min_margin_px, margin_fraction * size))
        if mode == "box":
            out.append(RenderedPrompt(np.empty((0, 2)), box))
        else:
            r, c = np.unravel_index(int(np.argmax(inside)), inside.shape)
            out.append(RenderedPrompt(np.array([[r + sl[0].start, c + sl[1].start]], dtype=float), box))
    return out
