import numpy as np
import pytest

from SPDSegmentLib.method.cpd import distill_slice
from SPDSegmentLib.method.prompts import PromptPoint


def _maps(n=5, shape=(20, 20)):
    return {t: np.zeros(shape, np.float32) for t in range(n)}


def test_point_on_non_salient_pixel_is_rejected_and_salient_one_kept():
    sal = _maps()
    sal[2][5, 5] = 0.9
    prompts = {2: [PromptPoint(2, 5, 5), PromptPoint(2, 15, 15)]}
    d = distill_slice(2, prompts, sal, tau=0.5, context=2)
    assert [(p.row, p.col) for p in d.with_status("kept")] == [(5, 5)]
    assert [(p.row, p.col) for p in d.with_status("rejected")] == [(15, 15)]


def test_neighbour_point_salient_on_both_slices_is_borrowed_and_one_salient_on_one_is_not():
    sal = _maps()
    sal[1][8, 8] = sal[2][8, 8] = 0.8  # salient on its own slice AND on t -> borrowed
    sal[3][12, 12] = 0.8  # salient on its own slice only -> not borrowed
    sal[2][4, 4] = 0.8  # salient on t only, not on its own slice 0 -> not borrowed
    prompts = {1: [PromptPoint(1, 8, 8)], 3: [PromptPoint(3, 12, 12)], 0: [PromptPoint(0, 4, 4)]}
    d = distill_slice(2, prompts, sal, tau=0.5, context=2)
    borrowed = d.with_status("borrowed")
    assert [(p.row, p.col, p.source_slice) for p in borrowed] == [(8, 8, 1)]
    assert "empty-consensus" not in d.flags


def test_context_limits_borrowing_and_window_is_clipped_at_the_edge():
    sal = _maps(6)
    for t in range(6):
        sal[t][:] = 1.0
    prompts = {0: [PromptPoint(0, 3, 3)], 5: [PromptPoint(5, 9, 9)]}
    assert len(distill_slice(2, prompts, sal, context=2).with_status("borrowed")) == 1  # slice 0 only
    assert len(distill_slice(1, prompts, sal, context=1).with_status("borrowed")) == 1
    assert len(distill_slice(2, prompts, sal, context=1).consensus) == 0


def test_duplicates_are_removed_and_empty_slices_flagged_or_given_the_peak():
    sal = _maps()
    for t in sal:
        sal[t][6, 6] = 0.9
    sal[2][10, 10] = 0.95
    prompts = {1: [PromptPoint(1, 6, 6)], 3: [PromptPoint(3, 6.4, 6)], 2: [PromptPoint(2, 18, 18)]}
    d = distill_slice(2, prompts, sal, context=2)
    assert len(d.with_status("borrowed")) == 1  # 6.4 is within 1 px of the first borrowed point
    sal[2][6, 6] = 0.0
    empty = distill_slice(2, prompts, sal, context=2)
    assert empty.consensus == [] and "empty-consensus" in empty.flags
    peak = distill_slice(2, prompts, sal, context=2, fallback="peak", fallback_radius_px=10)
    assert [(p.row, p.col, p.status) for p in peak.consensus] == [(10, 10, "fallback")]


def test_raw_mode_keeps_everything_and_bad_parameters_are_refused():
    sal = _maps()
    prompts = {2: [PromptPoint(2, 1, 1), PromptPoint(2, 2, 2)]}
    assert len(distill_slice(2, prompts, sal, mode="raw").consensus) == 2
    with pytest.raises(ValueError, match="mode"):
        distill_slice(2, prompts, sal, mode="nonsense")


def test_a_prior_that_rejects_most_points_is_reported_to_the_user():
    from SPDSegmentLib.method.cpd import ConsensusPoint, SliceDecision
    from SPDSegmentLib.method.pipeline import prior_disagreement

    def decisions(kept: int, rejected: int) -> dict:
        d = SliceDecision(0)
        d.points = [ConsensusPoint(0, i, i, 0, 0, "kept", 0.9) for i in range(kept)] + \
                   [ConsensusPoint(0, i, i, 0, 0, "rejected", 0.1) for i in range(rejected)]
        d.points.append(ConsensusPoint(0, 1, 1, 1, 0, "borrowed", 0.9))  # borrowed points are not the user's own
        return {0: d}

    from SPDSegmentLib.method.saliency import TrackPrior, TrainedSaliencyPrior

    trained = TrainedSaliencyPrior(head=None, metadata={})
    warning = prior_disagreement(decisions(1, 19), trained)
    assert warning and "5%" in warning and "sam-track" in warning
    own = prior_disagreement(decisions(1, 19), TrackPrior())
    assert own and "(sam-track)" not in own and "'raw'" in own  # never advises switching to itself
    assert prior_disagreement(decisions(5, 15), trained) is None  # 25% kept
    assert prior_disagreement(decisions(0, 4), trained) is None  # too few points to judge


def test_the_structure_radius_does_not_step_when_one_point_moves():
    """The radius sizes every box of a run. Thirty points at different depths inside a disc of
    radius 12 px: one point moved from 1 px to 5 px inside the edge moves the median of the depths
    to the next pixel distance, and every box with it; the rounded interquartile mean stays put, so
    a re-run after a drag re-decodes only the slices around the moved point. (A point d px inside
    the edge is d + 1 px from the nearest pixel outside.)"""
    from SPDSegmentLib.method.rendering import RADIUS_STEP_PX, structure_radius_px

    rows, cols = np.ogrid[:64, :64]
    disc = ((rows - 32) ** 2 + (cols - 32) ** 2 <= 12 ** 2).astype(np.float32)
    depths = [1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6, 7, 7, 8, 8, 9, 10, 11]

    def radius(values):
        points = {t: [PromptPoint(t, 32.0, 32.0 + 12 - d)] for t, d in enumerate(values)}
        return structure_radius_px({t: disc for t in points}, points, 0.5, default_px=10.0)

    moved = [5] + depths[1:]
    assert np.median(depths) != np.median(moved), "the premise: the median steps"
    assert radius(depths) == radius(moved)
    assert radius(depths) % RADIUS_STEP_PX == 0 and 4.0 <= radius(depths) <= 7.0, radius(depths)
    far = [d + 4 for d in depths]
    assert radius(far) >= radius(depths) + 3.0, "the radius still follows the structure"
    for few in ([3], [1, 2], [1, 2, 9]):  # any number of points gives a radius
        assert np.isfinite(radius(few)) and radius(few) >= RADIUS_STEP_PX
