"""The project's noisy-centerline model (declared with every result; the paper's is unpublished).

From a clean ordered path (e.g. :func:`~SPDSegmentLib.evaluation.skeleton.centerline_from_label`):
1. **Sampling** - points every ``point_spacing_mm`` along the path (at most half a slice apart, so
   every slice the structure crosses gets points).
2. **Jitter** - a smooth random in-plane wobble (Gaussian, sd ``jitter_mm``, correlated over
   ``jitter_corr_mm`` of path, like a hand).
3. **Drift** - runs of ``drift_length_mm`` covering ``drift_fraction`` of the path move sideways,
   perpendicular to the path and within the slice plane, so that their middle lies
   ``drift_offset_mm`` beyond the structure's surface (pushed further while still inside the label):
   the clicks land on neighbouring anatomy. A run eases in and out over a quarter of its length.
4. **Gaps** - runs of ``gap_length_mm`` covering ``gap_fraction`` of the path lose all points.
5. **Distractors** - ``distractors_per_100mm`` isolated points ``distractor_offset_mm`` off the path.
The result is an unordered point list (a gap cannot be represented by one curve) with a per-point
``kind`` (``on`` / ``drift`` / ``distractor``) and the gap spans, for tests and figures. Runs are
seeded: the same seed gives the same points.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage

from ..method.prompts import Centerline
from ..volume import Volume
from .skeleton import resample_polyline


@dataclass(frozen=True)
class NoiseModel:
    jitter_mm: float = 1.5
    jitter_corr_mm: float = 8.0
    drift_fraction: float = 0.15
    drift_length_mm: tuple[float, float] = (10.0, 25.0)
    drift_offset_mm: tuple[float, float] = (6.0, 15.0)
    gap_fraction: float = 0.10
    gap_length_mm: tuple[float, float] = (8.0, 20.0)
    distractors_per_100mm: float = 1.0
    distractor_offset_mm: tuple[float, float] = (15.0, 40.0)
    point_spacing_mm: float = 0.0  # 0: half the volume's slice spacing

    def as_dict(self) -> dict:
        return asdict(self)


SEVERITIES: dict[str, NoiseModel] = {
    "mild": NoiseModel(jitter_mm=0.75, drift_fraction=0.06, drift_length_mm=(5.0, 12.0),
                       drift_offset_mm=(4.0, 10.0), gap_fraction=0.05, gap_length_mm=(5.0, 10.0),
                       distractors_per_100mm=0.5),
    "clinical": NoiseModel(),
    "severe": NoiseModel(jitter_mm=2.5, drift_fraction=0.30, drift_length_mm=(15.0, 35.0),
                         drift_offset_mm=(8.0, 25.0), gap_fraction=0.20, gap_length_mm=(15.0, 35.0),
                         distractors_per_100mm=2.0),
}


@dataclass
class NoisyCenterline:
    centerline: Centerline
    kinds: np.ndarray  # per point: "on" | "drift" | "distractor"
    gaps_mm: list[tuple[float, float]]  # arc-length spans with no points
    severity: str
    seed: int
    model: NoiseModel


def _runs(rng: np.random.Generator, total_mm: float, fraction: float, length_mm: tuple[float, float],
          taken: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-overlapping arc-length spans covering about ``fraction`` of the path."""
    runs: list[tuple[float, float]] = []
    budget = fraction * total_mm
    for _ in range(200):
        if budget <= 0 or total_mm <= length_mm[0] * 2:
            break
        length = rng.uniform(*length_mm)
        start = rng.uniform(0.05 * total_mm, max(0.05 * total_mm, 0.95 * total_mm - length))
        span = (start, start + length)
        if any(span[0] < b + 5 and a - 5 < span[1] for a, b in runs + taken):
            continue
        runs.append(span)
        budget -= length
    return sorted(runs)


def _in_plane_normal(tangent_src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A unit vector in the slice plane (rows, cols) perpendicular to the path's in-plane direction."""
    d = tangent_src[1:]
    if np.linalg.norm(d) < 1e-6:
        angle = rng.uniform(0, 2 * np.pi)
        return np.array([0.0, np.cos(angle), np.sin(angle)])
    d = d / np.linalg.norm(d)
    sign = rng.choice([-1.0, 1.0])
    return np.array([0.0, -d[1] * sign, d[0] * sign])


def simulate(clean: Centerline, volume: Volume, label_kji: np.ndarray, severity: str | NoiseModel = "clinical",
             seed: int = 0) -> NoisyCenterline:
    """Noisy point list from a clean ordered path through ``label_kji`` (binary, ``[k, j, i]``)."""
    model = SEVERITIES[severity] if isinstance(severity, str) else severity
    name = severity if isinstance(severity, str) else "custom"
    rng = np.random.default_rng(seed)
    step = model.point_spacing_mm or 0.5 * volume.slice_spacing
    path = resample_polyline(clean.points_ras, step)
    arc = np.arange(len(path)) * step
    total = float(arc[-1])

    src = volume.ras_to_src(path)
    mm = np.array([volume.slice_spacing, *volume.in_plane_spacing])
    label_src = volume.with_array(label_kji).slices() > 0
    inside_mm = ndimage.distance_transform_edt(label_src, sampling=mm)

    def inside(p_src: np.ndarray) -> bool:
        idx = np.round(p_src).astype(int)
        if np.any(idx < 0) or np.any(idx >= label_src.shape):
            return False
        return bool(label_src[tuple(idx)])

    # 2. smooth jitter in the slice plane (mm -> px)
    sigma = max(1.0, model.jitter_corr_mm / step)
    wobble = ndimage.gaussian_filter1d(rng.normal(size=(len(path), 2)), sigma, axis=0, mode="nearest")
    wobble *= model.jitter_mm / max(wobble.std(), 1e-9)
    noisy = src.copy()
    noisy[:, 1:] += wobble / mm[1:]
    kinds = np.array(["on"] * len(path), dtype=object)

    # 3. drift runs
    tangent = np.gradient(src * mm, axis=0)
    drifts = _runs(rng, total, model.drift_fraction, model.drift_length_mm, [])
    for a, b in drifts:
        idx = np.flatnonzero((arc >= a) & (arc <= b))
        if len(idx) < 3:
            continue
        mid = idx[len(idx) // 2]
        normal = _in_plane_normal(tangent[mid], rng)
        radius = float(inside_mm[tuple(np.clip(np.round(src[mid]).astype(int), 0, np.array(label_src.shape) - 1))])
        offset = radius + rng.uniform(*model.drift_offset_mm)
        u = (arc[idx] - a) / (b - a)
        ease = np.clip(np.minimum(u, 1 - u) / 0.25, 0, 1)
        ease = ease * ease * (3 - 2 * ease)
        for i, e in zip(idx, ease):
            p = src[i] + normal * (e * offset) / np.r_[1.0, mm[1:]]
            extra = 0.0
            while e >= 1.0 and inside(p) and extra < 30.0:  # still on the target: push further out
                extra += 1.0
                p = src[i] + normal * (offset + extra) / np.r_[1.0, mm[1:]]
            noisy[i] = p
            if not inside(p):
                kinds[i] = "drift"

    # 4. gaps
    gaps = _runs(rng, total, model.gap_fraction, model.gap_length_mm, drifts)
    keep = np.ones(len(path), dtype=bool)
    for a, b in gaps:
        keep &= ~((arc >= a) & (arc <= b))

    # 5. distractors
    n_distractors = rng.poisson(model.distractors_per_100mm * total / 100.0)
    extra_pts, extra_kinds = [], []
    for _ in range(n_distractors):
        i = rng.integers(len(path))
        normal = _in_plane_normal(tangent[i], rng)
        p = src[i] + normal * rng.uniform(*model.distractor_offset_mm) / np.r_[1.0, mm[1:]]
        if not inside(p):
            extra_pts.append(p)
            extra_kinds.append("distractor")

    pts_src = np.vstack([noisy[keep], *([np.array(extra_pts)] if extra_pts else [])])
    all_kinds = np.concatenate([kinds[keep], np.array(extra_kinds, dtype=object)])
    ras = volume.src_to_ras(pts_src)
    centerline = Centerline(ras, ordered=False, name=f"noisy-{name}-seed{seed}")
    return NoisyCenterline(centerline, all_kinds, gaps, name, seed, model)


def with_params(severity: str, **overrides) -> NoiseModel:
    return replace(SEVERITIES[severity], **overrides)
