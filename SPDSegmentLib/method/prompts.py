"""Centerlines (RAS) and their per-slice point prompts.

A curve (ordered, any density) yields, on every slice, the points where its segments cross
the slice plane, interpolated exactly: a tortuous curve (aortic arch, bowel loop) crosses a slice
several times; where the curve runs inside a slice for more than two slice thicknesses, that
slice also gets points along the run, one per slice thickness (``in_plane``, the default). A point
list yields the points within half a voxel of each slice. On each slice the points are then grouped
by in-plane proximity, so separate crossings stay separate prompt groups.

A curve runs between its points as the user saw it drawn: straight (``linear``: curves made here,
Slicer's own sampled curve points) or, for a curve read from a Slicer markups file, as the cardinal
spline Slicer draws through the control points (``spline``, ``closed-spline``; see
:func:`slicer_curve_points`). A sparse curve around a bend would otherwise cut the corner, and the
command line would prompt other points than the Slicer module does on the same curve.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

from ..volume import Volume

INTERPOLATIONS = ("linear", "spline", "closed-spline")
SLICER_POINTS_PER_SEGMENT = 10  # how finely a Slicer curve node samples its curve (vtkMRMLMarkupsCurveNode)


def slicer_curve_points(control_ras: np.ndarray, closed: bool = False,
                        points_per_segment: int = SLICER_POINTS_PER_SEGMENT) -> np.ndarray:
    """The points of the curve Slicer draws through ``control_ras`` with its default curve type
    (cardinal spline): per coordinate a cubic spline over uniform knots, one per control point, with a
    zero first derivative at both ends of an open curve and periodic for a closed one, sampled
    ``points_per_segment`` times per segment, control points included. A file's curve is read as the
    user saw it, and as the module reads the same curve from the scene
    (``slicer.util.arrayFromMarkupsCurvePoints``; the tests compare the two on real MRML nodes)."""
    pts = np.asarray(control_ras, dtype=float).reshape(-1, 3)
    if len(pts) < 2:
        return pts.copy()
    if closed:
        knots, values, ends, segments = np.arange(len(pts) + 1), np.vstack([pts, pts[:1]]), "periodic", len(pts)
    else:
        zero = np.zeros(3)
        knots, values, ends, segments = np.arange(len(pts)), pts, ((1, zero), (1, zero)), len(pts) - 1
    u = np.linspace(0.0, segments, points_per_segment * segments + 1)
    return CubicSpline(knots, values, axis=0, bc_type=ends)(u)


@dataclass(frozen=True)
class Centerline:
    """RAS points; ``ordered`` means a curve, otherwise an unordered point list. ``interpolation``
    says how a curve runs between its points: ``linear`` (a polyline), or ``spline`` /
    ``closed-spline`` (the cardinal spline of a Slicer curve read from a file)."""

    points_ras: np.ndarray
    ordered: bool = True
    name: str = "centerline"
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        pts = np.asarray(self.points_ras, dtype=float).reshape(-1, 3)
        if not np.all(np.isfinite(pts)):
            raise ValueError(f"{self.name}: centerline has non-finite coordinates")
        if len(pts) == 0:
            raise ValueError(f"{self.name}: centerline has no points")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"{self.name}: interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        object.__setattr__(self, "points_ras", pts)

    def path_ras(self) -> np.ndarray:
        """The polyline a curve's prompts are cut from: its points, or its spline's samples."""
        if not self.ordered or self.interpolation == "linear":
            return self.points_ras
        return slicer_curve_points(self.points_ras, closed=self.interpolation == "closed-spline")


@dataclass(frozen=True)
class PromptPoint:
    """One 2D point prompt: continuous (row, col) on ``slice``; ``group`` numbers its crossing."""

    slice: int
    row: float
    col: float
    group: int = 0

    @property
    def pixel(self) -> tuple[int, int]:
        """The pixel the point is on: inside the slice for every point :func:`slice_prompts` makes."""
        return int(round(self.row)), int(round(self.col))


SlicePrompts = dict[int, list[PromptPoint]]


def _curve_crossings(src: np.ndarray, num_slices: int) -> list[tuple[int, float, float]]:
    """(slice, row, col) where each polyline segment crosses an integer slice plane.

    A segment [a, b) owns crossings with parameter u in [0, 1), so a vertex lying exactly on a
    plane is counted once; the last vertex is added if it lies on a plane. Segments lying inside a
    plane contribute their start vertex.
    """
    out: list[tuple[int, float, float]] = []
    for a, b in pairwise(src):
        sa, sb = a[0], b[0]
        if sa == sb:
            if float(sa).is_integer():
                out.append((int(sa), a[1], a[2]))
            continue
        lo, hi = sorted((sa, sb))
        for t in range(int(np.ceil(lo)), int(np.floor(hi)) + 1):
            u = (t - sa) / (sb - sa)
            if 0.0 <= u < 1.0:
                p = a + u * (b - a)
                out.append((t, p[1], p[2]))
    last = src[-1]
    if float(last[0]).is_integer():
        out.append((int(last[0]), last[1], last[2]))
    return [c for c in out if 0 <= c[0] < num_slices]


# spacing of the samples along an in-plane run, in slice thicknesses: the density of a steep curve's
# crossings (measured on clean curves: half a slice thickness lost 15 Dice points on an MR stomach,
# where the run's many points outweighed the rest of the curve; one thickness did not)
IN_PLANE_STEP_SLICES = 1.0


def _in_plane_samples(src: np.ndarray, spacing_mm: np.ndarray, num_slices: int,
                      min_run_slices: float = 2.0) -> list[tuple[int, float, float]]:
    """(slice, row, col) samples along the pieces of a polyline that stay within half a slice of one
    slice plane for an in-plane length of more than ``min_run_slices`` slice thicknesses (the curve
    runs inside the slice: a vessel in the axial plane), every ``IN_PLANE_STEP_SLICES`` slice
    thicknesses along the piece.

    Plane crossings alone give such a slice one point, or none, for a structure that may span
    centimetres of it; sampled so, the run has the density of the rest of the curve."""
    spacing_mm = np.asarray(spacing_mm, dtype=float)
    step_mm = IN_PLANE_STEP_SLICES * spacing_mm[0]
    dense = []
    for a, b in pairwise(src):
        n = max(1, int(np.ceil(np.linalg.norm((b - a) * spacing_mm) / (0.25 * step_mm))))
        dense.append(a + (np.arange(n) / n)[:, None] * (b - a))
    dense.append(src[-1:])
    dense = np.vstack(dense)
    nearest = np.round(dense[:, 0])
    out: list[tuple[int, float, float]] = []
    for run in np.split(np.arange(len(dense)), np.flatnonzero(np.diff(nearest) != 0) + 1):
        s = int(nearest[run[0]])
        if not 0 <= s < num_slices or len(run) < 2:
            continue
        rc = dense[run, 1:]
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(rc, axis=0) * spacing_mm[1:], axis=1))])
        if arc[-1] <= min_run_slices * spacing_mm[0]:
            continue
        at = np.arange(step_mm, arc[-1], step_mm)
        out.extend((s, float(r), float(c)) for r, c in zip(np.interp(at, arc, rc[:, 0]), np.interp(at, arc, rc[:, 1])))
    return out


def _group(points: np.ndarray, spacing_rc: tuple[float, float], distance_mm: float) -> np.ndarray:
    """Single-linkage groups of in-plane points closer than ``distance_mm``."""
    if len(points) == 1:
        return np.zeros(1, dtype=int)
    mm = points * np.asarray(spacing_rc)
    _, labels = connected_components(squareform(pdist(mm)) < distance_mm, directed=False)
    return labels


def slice_prompts(centerline: Centerline, volume: Volume, group_distance_mm: float = 10.0,
                  in_plane: bool = True) -> SlicePrompts:
    """Per-slice point prompts of a centerline in ``volume``'s (slice, row, col) frame.

    Points outside the volume are dropped. A point on the outer half of an edge pixel is moved to
    that pixel's centre, so every point's :attr:`PromptPoint.pixel` indexes the slice (rounding
    ``rows - 0.5`` gives ``rows``). ``group_distance_mm`` separates crossings on one slice
    (the two limbs of the aortic arch are centimetres apart; jitter around one crossing is not).
    ``in_plane`` (the default) also samples the pieces of a curve that run inside a slice
    (:func:`_in_plane_samples`): one crossing per slice would prompt only one spot of a vessel that
    runs along the slice.
    """
    src = volume.ras_to_src(centerline.path_ras())
    if centerline.ordered and len(src) > 1:
        raw = _curve_crossings(src, volume.num_slices)
        if in_plane:
            spacing = np.array([volume.slice_spacing, *volume.in_plane_spacing])
            raw += _in_plane_samples(src, spacing, volume.num_slices)
    else:
        nearest = np.round(src[:, 0])
        keep = np.abs(src[:, 0] - nearest) <= 0.5
        raw = [(int(s), r, c) for (s, r, c), k in zip(np.c_[nearest, src[:, 1:]], keep) if k]
    rows, cols = volume.slice_shape
    by_slice: dict[int, list[tuple[float, float]]] = {}
    for s, r, c in raw:
        if 0 <= s < volume.num_slices and -0.5 <= r <= rows - 0.5 and -0.5 <= c <= cols - 0.5:
            r, c = min(max(float(r), 0.0), rows - 1.0), min(max(float(c), 0.0), cols - 1.0)
            by_slice.setdefault(s, []).append((r, c))
    out: SlicePrompts = {}
    for s in sorted(by_slice):
        pts = np.asarray(by_slice[s])
        groups = _group(pts, volume.in_plane_spacing, group_distance_mm)
        out[s] = [PromptPoint(s, r, c, int(g)) for (r, c), g in zip(pts, groups)]
    return out


def prompt_extent(prompts: SlicePrompts, context: int, num_slices: int) -> range:
    """Slices the pipeline must process: the prompts' slice extent plus ``context`` on each side."""
    if not prompts:
        return range(0)
    return range(max(0, min(prompts) - context), min(num_slices, max(prompts) + context + 1))
