"""Contextual Prompt Distillation (CPD): from a slice's noisy points to a consensus prompt set.

For slice t, with saliency maps S and threshold tau:
1. local validation - keep t's own points p with S_t(p) > tau; the others are *rejected*;
2. candidates - points of slices t-n..t+n (clipped at the volume's edge) with S_j(p) > tau on their
   own slice j;
3. dual validation - a candidate is *borrowed* (carried to t at the same in-plane position) only if
   S_t(p) > tau as well;
4. consensus = kept + borrowed, de-duplicated (a borrowed point within ``dedupe_px`` of a point
   already in the set adds nothing).
Fallback when the consensus is empty (the paper is silent): ``"empty"`` (default) leaves the slice
empty and flags it; ``"peak"`` adds the saliency maximum of slice t near the slab's points, if it
exceeds tau. ``mode="raw"`` keeps all own points unvalidated (the baseline); ``mode="local"``
stops after step 1 (the ablation).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .prompts import PromptPoint, SlicePrompts

MODES = ("raw", "local", "spd")
FALLBACKS = ("empty", "peak")


@dataclass(frozen=True)
class ConsensusPoint:
    """A prompt on slice ``slice`` that came from ``source_slice`` (== slice unless borrowed)."""

    slice: int
    row: float
    col: float
    source_slice: int
    group: int
    status: str  # kept | rejected | borrowed | fallback
    saliency: float

    @property
    def pixel(self) -> tuple[int, int]:
        return int(round(self.row)), int(round(self.col))


@dataclass
class SliceDecision:
    """Audit record of one slice: which points SAM saw and why."""

    slice: int
    points: list[ConsensusPoint] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    def with_status(self, *statuses: str) -> list[ConsensusPoint]:
        return [p for p in self.points if p.status in statuses]

    @property
    def consensus(self) -> list[ConsensusPoint]:
        return self.with_status("kept", "borrowed", "fallback")


def _value(sal: np.ndarray, p) -> float:
    return float(sal[p.pixel])


def _near(p, chosen: list[ConsensusPoint], dedupe_px: float) -> bool:
    return any((p.row - q.row) ** 2 + (p.col - q.col) ** 2 <= dedupe_px ** 2 for q in chosen)


def distill_slice(t: int, prompts: SlicePrompts, saliency: dict[int, np.ndarray], tau: float = 0.5,
                  context: int = 2, mode: str = "spd", fallback: str = "empty",
                  dedupe_px: float = 1.0, fallback_radius_px: float = 20.0) -> SliceDecision:
    """Consensus prompt set of slice ``t`` (see module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown CPD mode {mode!r}; choose one of {MODES}")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; choose one of {FALLBACKS}")
    decision = SliceDecision(t)
    own: list[PromptPoint] = prompts.get(t, [])
    if mode == "raw":
        decision.points = [ConsensusPoint(t, p.row, p.col, t, p.group, "kept", float("nan")) for p in own]
    else:
        sal_t = saliency[t]
        for p in own:
            s = _value(sal_t, p)
            status = "kept" if s > tau else "rejected"
            if status == "kept" and _near(p, decision.consensus, dedupe_px):
                continue
            decision.points.append(ConsensusPoint(t, p.row, p.col, t, p.group, status, s))
        if mode == "spd":
            for k in range(t - context, t + context + 1):
                if k == t or k not in prompts or k not in saliency:
                    continue
                for p in prompts[k]:
                    if _value(saliency[k], p) > tau:
                        s = _value(sal_t, p)
                        if s > tau and not _near(p, decision.consensus, dedupe_px):
                            decision.points.append(ConsensusPoint(t, p.row, p.col, k, p.group, "borrowed", s))
    if not decision.consensus:
        decision.flags.append("empty-consensus")
        if fallback == "peak" and mode != "raw":
            _add_peak(decision, t, prompts, saliency, tau, context, fallback_radius_px)
    return decision


def _add_peak(decision: SliceDecision, t: int, prompts: SlicePrompts, saliency: dict[int, np.ndarray],
              tau: float, context: int, radius_px: float) -> None:
    slab = [p for k in range(t - context, t + context + 1) for p in prompts.get(k, [])]
    if not slab:
        return
    sal = saliency[t]
    rr, cc = np.mgrid[: sal.shape[0], : sal.shape[1]]
    near = np.zeros(sal.shape, dtype=bool)
    for p in slab:
        near |= (rr - p.row) ** 2 + (cc - p.col) ** 2 <= radius_px ** 2
    masked = np.where(near, sal, -1.0)
    r, c = np.unravel_index(int(np.argmax(masked)), sal.shape)
    if masked[r, c] > tau:
        decision.points.append(ConsensusPoint(t, float(r), float(c), t, -1, "fallback", float(masked[r, c])))
        decision.flags.append("fallback-peak")


def distill(prompts: SlicePrompts, saliency: dict[int, np.ndarray], slices: list[int],
            **kwargs) -> dict[int, SliceDecision]:
    """:func:`distill_slice` for every slice in ``slices``."""
    return {t: distill_slice(t, prompts, saliency, **kwargs) for t in slices}
