"""studies/prompt_jitter.py: the moved copies stay on their slices and are reproducible, the votes
count runs as documented, one pair's figures on the real MR aorta are the pipeline's own, the summary
counts losses against raw as drawn, and the scored draw (seed 0) is refused."""
from __future__ import annotations

import numpy as np
import pytest
from _helpers import load_study

from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.evaluation.noise import simulate
from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.io import read_volume
from SPDSegmentLib.method.continuity import TrackedObject, TrackingResult
from SPDSegmentLib.method.pipeline import SegmentParams, segment
from SPDSegmentLib.method.prompts import Centerline, PromptPoint
from SPDSegmentLib.method.saliency import PriorInputs, TrackPrior
from SPDSegmentLib.volume import Volume


@pytest.fixture(scope="module")
def study():
    yield from load_study("prompt_jitter")


def _oblique_volume() -> Volume:
    """Anisotropic voxels on axes rotated 20 degrees about two axes: in-plane is not x-y."""
    a, b = np.radians(20), np.radians(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx @ np.diag([0.7, 0.9, 2.5])
    m[:3, 3] = [-10, 20, -30]
    return Volume(np.zeros((12, 40, 50), dtype=np.int16), m, "oblique")


def _prompts(n: int = 400, shape=(40, 50)) -> dict:
    rng = np.random.default_rng(0)
    return {t: [PromptPoint(t, float(r), float(c), g % 2)
                for g, (r, c) in enumerate(rng.random((n // 4, 2)) * (np.array(shape) - 1))] for t in range(4)}


def test_moved_prompts_stay_on_their_slice_and_are_reproducible(study):
    prompts, shape, spacing = _prompts(), (40, 50), (0.8, 1.25)
    a = study.moved_prompts(prompts, spacing, shape, 0.5, seed=1)
    assert a == study.moved_prompts(prompts, spacing, shape, 0.5, seed=1), "seeded: the same copy again"
    assert a != study.moved_prompts(prompts, spacing, shape, 0.5, seed=2)
    moves = []
    for t, points in prompts.items():
        assert [(p.slice, p.group) for p in a[t]] == [(p.slice, p.group) for p in points]
        for p, q in zip(points, a[t]):
            assert 0 <= q.row <= shape[0] - 1 and 0 <= q.col <= shape[1] - 1
            if 0 < q.row < shape[0] - 1 and 0 < q.col < shape[1] - 1:  # not clipped at the edge
                moves.append(((q.row - p.row) * spacing[0], (q.col - p.col) * spacing[1]))
    assert np.std(moves, axis=0) == pytest.approx([0.5, 0.5], rel=0.2), "the sd is in mm, per axis"


def test_a_moved_centerline_moves_in_the_slice_plane_of_an_oblique_volume(study):
    volume = _oblique_volume()
    src = np.c_[np.linspace(1, 10, 300), np.full(300, 20.0), np.linspace(5, 45, 300)]
    centerline = Centerline(volume.src_to_ras(src), name="c")
    moved = study.moved_centerline(centerline, volume, 0.5, seed=3)
    after = volume.ras_to_src(moved.points_ras)
    assert np.allclose(after[:, 0], src[:, 0], atol=1e-9), "no point changes slice"
    dist = np.linalg.norm(moved.points_ras - centerline.points_ras, axis=1)
    assert np.sqrt(np.mean(dist ** 2)) == pytest.approx(0.5 * np.sqrt(2), rel=0.15), "0.5 mm sd on each in-plane axis"
    assert moved.name == "c" and moved.ordered and moved.interpolation == centerline.interpolation


class _DiskPrior:
    """A stand-in base prior (the voting is under test, not the prior): 1 within 3 px of each point."""

    name, default_tau, embeds, training_free = "disks", 0.5, "none", True

    def compute(self, inputs: PriorInputs, slice_indices: list[int]) -> dict[int, np.ndarray]:
        rows, cols = np.indices(inputs.volume.slice_shape)
        out = {}
        for t in slice_indices:
            m = np.zeros(inputs.volume.slice_shape, dtype=np.float32)
            for p in inputs.prompts.get(t, []):
                m[(rows - p.row) ** 2 + (cols - p.col) ** 2 <= 9] = 1.0
            out[t] = m
        return out


def test_votes_count_the_run_on_the_prompts_as_given_and_the_moved_copies(study):
    volume = Volume(np.zeros((4, 40, 50), dtype=np.int16), np.diag([0.8, 0.8, 2.0, 1.0]), "v")
    prompts = {t: [PromptPoint(t, 20.0, 25.0)] for t in range(4)}
    inputs = PriorInputs(volume, {}, prompts)
    base = _DiskPrior()
    runs = [base.compute(inputs, [0, 1, 2, 3])] + [
        base.compute(PriorInputs(volume, {}, study.moved_prompts(prompts, volume.in_plane_spacing,
                                                                 volume.slice_shape, 2.0, seed=k)), [0, 1, 2, 3])
        for k in (1, 2)]
    votes = {t: sum(r[t] for r in runs) for t in range(4)}
    majority = study.VotingPrior(base, copies=3, sd_mm=2.0).compute(inputs, [0, 1, 2, 3])
    union = study.VotingPrior(base, copies=3, min_votes=1, sd_mm=2.0).compute(inputs, [0, 1, 2, 3])
    for t in range(4):
        assert np.array_equal(majority[t] > 0, votes[t] >= 2)
        assert np.array_equal(union[t] > 0, votes[t] >= 1)
        assert (votes[t] == 1).any(), "the moves are large enough that the runs disagree somewhere"
    assert study.majority([np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool),
                           np.array([1, 0, 0, 0], bool)]).tolist() == [True, False, False, False]


def test_one_pairs_figures_on_the_real_mr_aorta_are_the_pipelines_own(study, backend):
    """The figures of a pair are what the pipeline gives: as drawn, with a moved copy, and with the
    prior's maps and the prompts of the drawn and the moved curve swapped (seed 1: unscored)."""
    volume = read_volume(sample_data.path("abdomen_mr/image.nii.gz"), "abdomen_mr")
    value = next(v for v, n in sample_data.class_map("abdomen_mr").items() if n == "aorta")
    label = (read_volume(sample_data.path("abdomen_mr/labels.nii.gz")).array == value).astype(np.uint8)
    ref = volume.with_array(label).slices() > 0
    drawn = simulate(centerline_from_label(volume, label), volume, label, "mild", seed=1).centerline
    priors = {"spd": TrackPrior(), "prior-majority": study.VotingPrior(TrackPrior(), 2, None, 0.5),
              "prior-union": study.VotingPrior(TrackPrior(), 2, 1, 0.5)}
    figures = study.pair_figures(volume, ref, "mri", drawn, backend, priors, copies=2, sd_mm=0.5)

    def dsc(curve, method="spd", saliency=None, prior=None):
        result = segment(volume, curve, backend, prior or TrackPrior(),
                         SegmentParams(method=method, intensity_preset="mri"), saliency=saliency)
        return result, round(dice(volume.with_array(result.mask).slices() > 0, ref), 4)

    moved = study.moved_centerline(drawn, volume, 0.5, seed=1001)
    as_drawn, spd = dsc(drawn)
    on_moved, spd_moved = dsc(moved)
    assert any(not np.array_equal(as_drawn.saliency_maps[t], on_moved.saliency_maps[t])
               for t in as_drawn.processed_slices), "the moved copy's prior differs, so the swaps below tell"
    assert figures["spd-copies"] == [spd, spd_moved] and figures["spd"] == spd
    assert figures["raw-copies"] == [dsc(drawn, "raw")[1], dsc(moved, "raw")[1]]
    assert figures["prior-moved-copies"] == [spd, dsc(drawn, saliency=on_moved.saliency_maps)[1]]
    assert figures["prompts-moved-copies"] == [spd, dsc(moved, saliency=as_drawn.saliency_maps)[1]]
    for name, votes in (("prior-majority", None), ("prior-union", 1)):
        assert figures[name] == dsc(drawn, prior=study.VotingPrior(TrackPrior(), 2, votes, 0.5))[1]
    assert all(0.0 < figures[k] <= 1.0 for k in study.VARIANTS)


def test_the_summary_counts_losses_against_raw_as_drawn(study):
    row = {"case": "a", "severity": "mild", "raw": 0.60, "spd": 0.595, "prior-majority": 0.58,
           "prior-union": 0.70, "pipeline-majority": 0.589, "raw-copies": [0.60, 0.50, 0.61],
           "spd-copies": [0.595, 0.52, 0.55], "prior-moved-copies": [0.595, 0.595, None],
           "prompts-moved-copies": [0.595, 0.40, 0.60]}
    lines = study.summary([row])
    by_name = {line.split()[0]: line for line in lines[1:5]}
    assert "losses 0" in by_name["spd"] and "losses 0" in by_name["prior-union"]
    assert "losses 1: a/mild" in by_name["prior-majority"] and "losses 1: a/mild" in by_name["pipeline-majority"]
    assert "median 11.0 points" in lines[5] and "median 7.5 points" in lines[6]
    assert "median 0.0 points" in lines[7], "a copy that processes other slices (None) is left out"
    assert "median 20.0 points" in lines[8] and "over 5 points on 1 pairs" in lines[8]
    assert lines[9].endswith(": 1"), "the third copy loses (0.55 < 0.61 - 0.01)"


def _object(oid: int, rows: slice, slices=range(3)) -> TrackedObject:
    masks = {}
    for t in slices:
        m = np.zeros((10, 10), dtype=bool)
        m[rows, 2:8] = True
        masks[t] = m
    return TrackedObject(oid, masks)


def test_flipped_decisions_are_matched_by_3d_dice_and_grouped_by_kind(study):
    ref = np.zeros((3, 10, 10), dtype=bool)
    ref[:, 0:4] = True
    drawn = TrackingResult([_object(0, slice(0, 4)), _object(1, slice(4, 6)), _object(2, slice(7, 10))], kept=[0, 1],
                           reasons={0: "target: 12 points", 1: "kept: 5 points, another part of the target",
                                    2: "rejected: a drift excursion from the target (4 points)"})
    moved = TrackingResult([_object(10, slice(0, 4)), _object(12, slice(7, 10), range(2)),
                            _object(11, slice(5, 6), range(1))], kept=[10, 12],
                           reasons={10: "target: 13 points", 12: "kept: 6 points, another part of the target",
                                    11: "rejected: 1 points with its parts, fewer than 5"})
    assert study.object_dice(drawn.objects[2], moved.objects[1]) == pytest.approx(0.8)  # 2 of 3 slices
    assert study.object_dice(drawn.objects[1], moved.objects[2]) == pytest.approx(2 * 6 / (36 + 6))  # 0.29: no match
    flips = study.decision_flips(drawn, moved, ref)
    assert flips == [
        {"drawn": "kept: N points, another part of the target", "moved": "no matching object", "area": 12,
         "on_label": 0.0},
        {"drawn": "rejected: a drift excursion from the target", "moved": "kept: N points, another part of the target",
         "area": 18, "on_label": 0.0}]
    lines = study.flips_summary([{"region-dice": [1.0, 0.85], "flips": flips},
                                 {"region-dice": [0.95], "flips": [{"drawn": "target: N points",
                                                                    "moved": "no matching object"}]}])
    assert lines[0].endswith("unchanged on 1, its 3-D Dice with the drawn one's median 0.950, below 0.9 on 1")
    assert lines[1] == "pairs with a flip: 2; flips: 3; pairs where the target changes: 1"
    assert len(lines) == 5


def test_the_scored_draw_is_refused(study):
    with pytest.raises(SystemExit, match="scored draw"):
        study.record("no-cases-needed", study.draws.SCORED_SEED, ["mild"], 3, 0.5, 1, "unused")
    with pytest.raises(SystemExit, match="copies"):
        study.record("no-cases-needed", 1, ["mild"], 1, 0.5, 1, "unused")
