"""The volume pipeline: centerline -> per-slice prompts -> saliency -> CPD -> SAM -> 3D mask.

Everything the method compares is a parameter of :class:`SegmentParams`, so the raw-prompt baseline
and SPD run with the same backend, windowing, rendering and slices ("everything else equal").
Only slices inside the centerline's slice extent +- ``context`` are processed, and SAM encodes only
the slices that are decoded or that a trained prior needs. Nothing is written to disk here.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from ..volume import Volume
from .checks import Preflight, preflight
from .cpd import FALLBACKS, MODES, SliceDecision, distill
from .prompts import Centerline, SlicePrompts, prompt_extent, slice_prompts
from .rendering import RenderedPrompt, point_boxes, region_prompts, render, run_radius_px
from .saliency import PriorInputs, SaliencyPrior
from .windowing import volume_window

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


class Cancelled(RuntimeError):
    """The user cancelled; nothing was written."""


class NothingToSegment(ValueError):
    """The prior found the structure at none of the user's points (a blank, uniform or unreadable
    image, or points far off any structure). ``result`` holds the (empty) run, for ``--force``."""

    def __init__(self, message: str, result: SegmentationResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class SegmentParams:
    """Knobs of one run. ``tau=None`` takes the prior's own default."""

    method: str = "spd"  # raw | local | spd
    tau: float | None = None
    context: int = 2
    thick_context: int | None = None  # CPD borrows from max(context, this) slices per side where the structure is thick
    thick_radius_mm: float = 8.0  # ... thick: the radius at the points kept on their own slice is at least this
    consistency: bool = False  # inference-time previous-slice guidance (one direction)
    propagate: bool = True  # slices without consensus points take the prior's region there as their prompt
    propagate_radius_ratio: float | None = 3.0  # ... unless its inscribed radius > this x the run's (None: no limit)
    fallback: str = "empty"  # empty | peak
    intensity_preset: str = "auto"
    group_distance_mm: float = 10.0
    box_with_points: bool | None = None  # None: the backend's default (False for box backends)
    leak_limit: float | None = 2.0  # a slice's mask over this x its neighbours' is a leak (None: no limit)
    leak_window: int = 3  # slices on each side whose masks (segmented from points) are the neighbours

    def validate(self) -> None:
        if self.method not in MODES:
            raise ValueError(f"method must be one of {MODES}, got {self.method!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.tau is not None and not 0.0 <= self.tau < 1.0:
            raise ValueError(f"tau must lie in [0, 1), got {self.tau}")
        if not 0 <= self.context <= 10:
            raise ValueError(f"context (slices per side) must lie in 0..10, got {self.context}")
        if self.thick_context is not None and not 0 <= self.thick_context <= 10:
            raise ValueError(f"thick_context (slices per side) must lie in 0..10 or be None, got {self.thick_context}")
        if not (math.isfinite(self.thick_radius_mm) and self.thick_radius_mm > 0):
            raise ValueError(f"thick_radius_mm must be a positive number, got {self.thick_radius_mm}")
        ratio = self.propagate_radius_ratio
        if ratio is not None and not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"propagate_radius_ratio must be a positive number or None (no limit), got {ratio}")
        limit = self.leak_limit
        if limit is not None and not (math.isfinite(limit) and limit > 1):
            raise ValueError(f"leak_limit must be a number above 1 or None (no limit), got {limit}")
        if not 1 <= self.leak_window <= 20:
            raise ValueError(f"leak_window (slices per side) must lie in 1..20, got {self.leak_window}")


@dataclass
class SegmentationResult:
    """3D outputs in the input's array order ``[k, j, i]``, plus the audit trail."""

    volume: Volume
    mask: np.ndarray  # uint8
    prompts: SlicePrompts
    decisions: dict[int, SliceDecision]
    processed_slices: list[int]
    tau: float
    params: SegmentParams
    timings: dict[str, float] = field(default_factory=dict)
    encode_calls: int = 0
    saliency_maps: dict[int, np.ndarray] = field(default_factory=dict)  # per processed slice
    warnings: list[str] = field(default_factory=list)  # for the user: things that make the result doubtful

    @property
    def saliency(self) -> np.ndarray:
        """The saliency maps as a float32 volume in array order (0 outside processed slices)."""
        src = np.zeros((self.volume.num_slices, *self.volume.slice_shape), dtype=np.float32)
        for t, m in self.saliency_maps.items():
            src[t] = m
        return self.volume.to_array_order(src).copy()

    def counts(self) -> dict[str, int]:
        out = {"kept": 0, "rejected": 0, "borrowed": 0, "fallback": 0, "empty_slices": 0, "leak_limited_slices": 0}
        for d in self.decisions.values():
            for p in d.points:
                out[p.status] += 1
            out["empty_slices"] += "empty-consensus" in d.flags
            out["leak_limited_slices"] += "leak-limited" in d.flags
        return out

    def audit_rows(self) -> list[dict]:
        """One row per prompt point: slice, source slice, status, saliency, RAS position."""
        rows = []
        for t, d in sorted(self.decisions.items()):
            for p in d.points:
                ras = self.volume.src_to_ras([[t, p.row, p.col]])[0]
                rows.append({"slice": t, "source_slice": p.source_slice, "status": p.status,
                             "saliency": p.saliency, "r": ras[0], "a": ras[1], "s": ras[2]})
        return rows

    def summary(self) -> dict:
        return {"params": asdict(self.params), "tau": self.tau, "processed_slices": len(self.processed_slices),
                "counts": self.counts(), "timings_s": self.timings, "encode_calls": self.encode_calls,
                "warnings": self.warnings}


DISAGREEMENT_WARNING_FRACTION = 0.2  # fewer of the user's points kept than this: the prior likely misfits
DISAGREEMENT_MIN_POINTS = 5


def prior_disagreement(decisions: dict[int, SliceDecision], prior) -> str | None:
    """A warning when the prior rejects most of the user's own points: on a scan or anatomy the prior
    was not made for (e.g. an abdominal prior on a chest CT) it sees nothing, and SPD would drop
    the prompts silently."""
    own = [p for d in decisions.values() for p in d.points if p.status in ("kept", "rejected")]
    if len(own) < DISAGREEMENT_MIN_POINTS:
        return None
    kept = sum(p.status == "kept" for p in own) / len(own)
    if kept >= DISAGREEMENT_WARNING_FRACTION:
        return None
    prior_name = getattr(prior, "name", str(prior))
    if getattr(prior, "training_free", False):  # the points themselves are likely off
        return (f"the saliency prior '{prior_name}' accepted only {100 * kept:.0f}% of the centerline's points: "
                "most points may lie off the structure, or it is hard to see; check the rejected points and the "
                "result, or compare with method 'raw'")
    return (f"the saliency prior '{prior_name}' accepted only {100 * kept:.0f}% of the centerline's points: it may "
            "not fit this scan or anatomy; check the result, or use the training-free prior (sam-track)")


WIDE_PRIOR_RATIO = 13.0  # the prior's region at the kept points, over this x the structure's cross-section


def prior_region_ratio(decisions: dict[int, SliceDecision], saliency: dict[int, np.ndarray], tau: float,
                       radius_px: float) -> float | None:
    """How many times the structure's own cross-section (pi r^2, r the run's radius) the prior's region
    around the user's kept points is: the median over the slices with such a region. 1-12 on the
    sample's thin structures where the prior follows them; 14-150 where it also kept the organ a thin
    vessel runs in, after drifted points landed on it. None without a kept point on the region."""
    ratios = []
    for t, d in decisions.items():
        kept = [p for p in d.points if p.status == "kept"]
        if not kept or t not in saliency:
            continue
        labels, _ = ndimage.label(saliency[t] > tau)
        ids = sorted({int(labels[p.pixel]) for p in kept} - {0})
        if ids:
            ratios.append(float(np.isin(labels, ids).sum()) / (math.pi * radius_px ** 2))
    return float(np.median(ratios)) if ratios else None


def wide_prior_warning(ratio: float | None, radius_mm: float, thin_mm: float) -> str | None:
    """A warning when a thin structure's prior region is many times its cross-section: borrowed points
    then pass validation anywhere on the surrounding organ and may widen the boxes onto it. On the
    unscored noise draws (docs/method.md, "A sign of a prior wider than a thin structure") this picked
    portal veins only, 3 of the 5 portal-vein pairs where SPD lost to raw prompts among them; on the
    scored draw it picks none of SPD's losses, so it asks for a comparison and changes nothing."""
    if ratio is None or ratio < WIDE_PRIOR_RATIO or radius_mm >= thin_mm:
        return None
    return (f"the saliency prior's region around the centerline's points is about {ratio:.0f} times the "
            f"cross-section of the structure they mark ({radius_mm:.1f} mm radius): it likely includes an organ or "
            "tissue around a thin structure, and the result may reach into it; compare with method 'raw' "
            "(the points as given)")


def _check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("segmentation cancelled by the user")


def _keep_supported(mask: np.ndarray, previous: np.ndarray, points, reach_px: float) -> np.ndarray:
    """Drop connected parts of ``mask`` that neither touch the dilated previous mask nor hold a prompt."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    near_prev = ndimage.binary_dilation(previous, iterations=max(1, int(round(reach_px))))
    keep = set(np.unique(labels[near_prev & mask]))
    for p in points:
        keep.add(labels[p.pixel])
    keep.discard(0)
    return np.isin(labels, list(keep))


def _decode_union(backend, emb, prompts: list[RenderedPrompt], shape: tuple[int, int]) -> np.ndarray:
    """One slice's mask: the union of SAM's masks for its rendered prompts."""
    mask = np.zeros(shape, dtype=bool)
    for prompt in prompts:
        mask |= backend.decode(emb, prompt.points_rc if len(prompt.points_rc) else None, prompt.box_rc).mask
    return mask


def _limit_leaks(out: np.ndarray, decisions: dict[int, SliceDecision], consensus: dict, processed: list[int],
                 backend, slices_u8: dict[int, np.ndarray], radius_px: float, params: SegmentParams,
                 with_points: bool) -> None:
    """The leak limit. A structure's cross-section changes little from one slice to the next; a
    mask over ``leak_limit`` x the median area of the masks segmented from points on the
    ``leak_window`` slices each side followed its box onto a neighbour (the prior's region ran
    there). Such a slice is decoded again from point-sized boxes around its consensus points, as raw
    prompts are, or, with no point of its own (a propagated region), left empty. A slice with fewer
    than two such neighbours is not judged. In place; flags the slice ``leak-limited``."""
    areas = {t: float(out[t].sum()) for t in processed if out[t].any() and "propagated" not in decisions[t].flags}
    for t in processed:
        near = [a for s, a in areas.items() if 0 < abs(s - t) <= params.leak_window]
        if len(near) < 2 or out[t].sum() <= params.leak_limit * float(np.median(near)):
            continue
        decisions[t].flags.append("leak-limited")
        out[t] = 0
        if not consensus[t]:
            continue
        prompts = point_boxes(consensus[t], out[t].shape, radius_px, backend.prompt_mode, with_points)
        out[t] = _decode_union(backend, backend.embed(slices_u8[t]), prompts, out[t].shape)


def _borrowing_window(prompts, saliency: dict[int, np.ndarray], processed: list[int], tau: float,
                      spacing_px: float, params: SegmentParams) -> int:
    """``thick_context`` where the structure is thick, else ``context``. Thick is judged at the points
    kept on their own slice (before any borrowing), so the window does not depend on itself: a solid
    organ's points two or three slices away still lie inside it, where a thin vessel's do not."""
    kept = {t: d.consensus for t, d in distill(prompts, saliency, processed, tau=tau, mode="local").items()}
    radius_mm = run_radius_px(saliency, kept, tau, spacing_px) * spacing_px
    return params.thick_context if radius_mm >= params.thick_radius_mm else params.context


def segment(volume: Volume, centerline: Centerline, backend, prior: SaliencyPrior,
            params: SegmentParams | None = None, progress: ProgressCallback | None = None,
            cancel: CancelCheck | None = None, saliency: dict[int, np.ndarray] | None = None,
            checked: Preflight | None = None) -> SegmentationResult:
    """Segment the structure a (noisy) centerline runs through.

    ``backend`` is a :class:`~SPDSegmentLib.sam.backend.SamBackend`; ``prior`` any
    :class:`~SPDSegmentLib.method.saliency.SaliencyPrior`. ``progress(fraction, message)`` is called
    per slice; ``cancel()`` returning True stops the run with :class:`Cancelled`. ``saliency`` reuses
    the per-slice maps of an earlier run on the same prompts (``result.saliency_maps``), skipping the
    prior. The inputs are checked first (:func:`~SPDSegmentLib.method.checks.preflight`; ``checked``
    is its outcome when the caller already ran it). Raises :class:`NothingToSegment` when the prior
    finds the structure at none of the points.
    """
    params = params or SegmentParams()
    params.validate()
    if checked is None:
        checked = preflight(volume, centerline, params)
    volume = checked.volume
    report = progress or (lambda f, m: None)
    timings = {"prompts": 0.0, "encode": 0.0, "saliency": 0.0, "cpd": 0.0, "decode": 0.0}
    encodes_before = backend.encode_calls

    t0 = time.perf_counter()
    prompts = slice_prompts(centerline, volume, params.group_distance_mm)
    if not prompts:
        raise ValueError(f"the centerline {centerline.name!r} does not pass through the volume "
                         f"{volume.name!r}: check that both are in the same space (parent transforms?)")
    processed = list(prompt_extent(prompts, params.context, volume.num_slices))
    window = volume_window(volume, params.intensity_preset)
    src = volume.slices()
    slices_u8 = {t: window.apply(src[t]) for t in processed}
    timings["prompts"] = time.perf_counter() - t0

    tau = prior.default_tau if params.tau is None else params.tau
    to_encode = {"none": [], "prompted": [t for t in processed if t in prompts], "all": processed}[prior.embeds]
    if saliency is not None:
        to_encode = []
    needs_embeddings = bool(to_encode)
    if needs_embeddings:
        def encode_tick(done: int, total: int) -> None:
            _check_cancel(cancel)
            report(0.5 * done / max(total, 1), f"encoding slices ({done}/{total})")

        _check_cancel(cancel)
        t1 = time.perf_counter()
        backend.embed_many([slices_u8[t] for t in to_encode], progress=encode_tick)
        timings["encode"] += time.perf_counter() - t1

    stage = (0.5, 0.75) if needs_embeddings else (0.0, 0.25)

    def prior_tick(done: int, total: int) -> None:
        _check_cancel(cancel)
        report(stage[0] + (stage[1] - stage[0]) * done / max(total, 1), f"saliency prior: slice {done + 1}/{total}")

    t1 = time.perf_counter()
    if saliency is None:
        saliency = prior.compute(PriorInputs(volume, slices_u8, prompts, backend, window.preset, prior_tick),
                                 processed)
    elif not set(processed) <= set(saliency):
        raise ValueError("the given saliency maps do not cover the slices this run processes")
    timings["saliency"] = time.perf_counter() - t1
    _check_cancel(cancel)

    t1 = time.perf_counter()
    spacing_px = min(volume.in_plane_spacing)
    borrow_context = params.context
    if params.method == "spd" and params.thick_context is not None and params.thick_context > params.context:
        borrow_context = _borrowing_window(prompts, saliency, processed, tau, spacing_px, params)
    decisions = distill(prompts, saliency, processed, tau=tau, context=borrow_context, mode=params.method,
                        fallback=params.fallback)
    timings["cpd"] = time.perf_counter() - t1
    warnings = list(checked.warnings)
    if params.method != "raw":
        warning = prior_disagreement(decisions, prior)
        if warning:
            log.warning(warning)
            warnings.append(warning)

    consensus = {t: d.consensus for t, d in decisions.items()}
    radius_px = run_radius_px(saliency, consensus, tau, spacing_px)
    with_points = params.box_with_points if params.box_with_points is not None else backend.prompt_mode != "box"
    ratio = params.propagate_radius_ratio
    propagate_limit_px = None if ratio is None else ratio * radius_px  # a thicker region is a neighbour
    if params.method != "raw":
        region_ratio = prior_region_ratio(decisions, saliency, tau, radius_px)
        warning = wide_prior_warning(region_ratio, radius_px * spacing_px, params.thick_radius_mm)
        if warning:
            log.warning(warning)
            warnings.append(warning)

    out = np.zeros((volume.num_slices, *volume.slice_shape), dtype=np.uint8)
    previous: np.ndarray | None = None
    start = stage[1]
    for i, t in enumerate(processed):
        _check_cancel(cancel)
        report(start + (1 - start) * i / len(processed), f"segmenting slice {t} ({i + 1}/{len(processed)})")
        points = consensus[t]
        prompts_t = render(points, saliency[t], tau, radius_px, backend.prompt_mode, with_points)
        if params.propagate and params.method != "raw" and not prompts_t:
            prompts_t = region_prompts(saliency[t], tau, backend.prompt_mode, max_radius_px=propagate_limit_px)
            if prompts_t:
                decisions[t].flags.append("propagated")
        if params.consistency and not prompts_t and previous is not None and previous.any():
            # carry the previous slice's mask forward as a box where the prior still agrees
            region = np.argwhere(previous & (saliency[t] > tau))
            if len(region):
                decisions[t].flags.append("propagated")
                r0, c0 = region.min(0) - 2
                r1, c1 = region.max(0) + 2
                prompts_t = [RenderedPrompt(np.empty((0, 2)), (float(r0), float(c0), float(r1), float(c1)))]
        if not prompts_t:
            previous = np.zeros(volume.slice_shape, dtype=bool) if params.consistency else None
            continue
        t1 = time.perf_counter()
        emb = backend.embed(slices_u8[t])
        timings["encode"] += time.perf_counter() - t1
        t1 = time.perf_counter()
        mask = _decode_union(backend, emb, prompts_t, volume.slice_shape)
        if params.consistency and previous is not None and previous.any():
            mask = _keep_supported(mask, previous, points, reach_px=radius_px)
        timings["decode"] += time.perf_counter() - t1
        out[t] = mask
        previous = mask if params.consistency else None
    if params.leak_limit is not None and params.method != "raw":
        t1 = time.perf_counter()
        _limit_leaks(out, decisions, consensus, processed, backend, slices_u8, radius_px, params, with_points)
        timings["decode"] += time.perf_counter() - t1
    report(1.0, "done")

    result = SegmentationResult(volume, volume.to_array_order(out).copy(), prompts, decisions, processed, tau, params,
                                timings, backend.encode_calls - encodes_before, saliency, warnings)
    if params.method != "raw" and not out.any():
        n_points = sum(len(p) for p in prompts.values())
        message = (f"the saliency prior '{prior.name}' found the structure at none of the {n_points} centerline "
                   "points, so nothing was segmented: the image may be blank, uniform or unreadable around them, "
                   "or the points lie off any structure. Check the volume and the centerline; to keep the empty "
                   "result anyway, use --force")
        result.warnings.append(message)
        raise NothingToSegment(message, result)
    return result
