"""The leak limit of the final pass: a slice whose mask is far larger than its neighbours' followed
its box onto a neighbouring structure and is decoded again from its points. On the real MR IVC it
takes the leaks back; on the real MR liver, whose cross-section changes smoothly, it leaves the
result as it was; the rule itself on a synthetic run."""
from __future__ import annotations

import numpy as np
import pytest

from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.evaluation.noise import simulate
from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.io import read_volume
from SPDSegmentLib.method.cpd import SliceDecision
from SPDSegmentLib.method.pipeline import SegmentParams, _decode_union, _limit_leaks, segment
from SPDSegmentLib.method.saliency import load_prior


def _noisy_mr(name: str, severity: str):
    """An MR structure with a noise draw the evaluation does not score (seed 1)."""
    volume = read_volume(sample_data.path("abdomen_mr/image.nii.gz"), "abdomen_mr")
    value = next(v for v, n in sample_data.class_map("abdomen_mr").items() if n == name)
    label = (read_volume(sample_data.path("abdomen_mr/labels.nii.gz")).array == value).astype(np.uint8)
    noisy = simulate(centerline_from_label(volume, label), volume, label, severity, seed=1).centerline
    return volume, label, noisy


def _with_and_without(backend, name: str, severity: str):
    volume, label, noisy = _noisy_mr(name, severity)
    prior = load_prior("sam-track", backend)
    unlimited = segment(volume, noisy, backend, prior, SegmentParams(intensity_preset="mri", leak_limit=None))
    limited = segment(volume, noisy, backend, prior, SegmentParams(intensity_preset="mri"),
                      saliency=unlimited.saliency_maps)
    ref = volume.with_array(label).slices() > 0
    return volume, ref, unlimited, limited


def test_the_leak_limit_takes_back_the_leaks_of_the_mr_ivc(backend):
    volume, ref, unlimited, limited = _with_and_without(backend, "inferior_vena_cava", "mild")
    before, after = (volume.with_array(r.mask).slices() > 0 for r in (unlimited, limited))
    flagged = [t for t, d in limited.decisions.items() if "leak-limited" in d.flags]
    assert flagged, "slices far larger than their neighbours are limited"
    assert all("leak-limited" not in d.flags for d in unlimited.decisions.values())
    assert limited.counts()["leak_limited_slices"] == len(flagged), "the run's summary counts them"
    for t in limited.processed_slices:
        if t in flagged:
            assert after[t].sum() < before[t].sum(), f"slice {t}: the limited mask is smaller"
        else:
            assert np.array_equal(after[t], before[t]), f"slice {t} was not judged a leak and stays as it was"
    d0, d1 = dice(before, ref), dice(after, ref)
    assert d1 > d0 + 0.05, f"DSC {d0:.3f} -> {d1:.3f}"


def test_the_leak_limit_leaves_the_mr_liver_as_it_was(backend):
    """A large organ whose cross-section grows and shrinks along the curve: no slice is far larger
    than its neighbours, so the limit must not cut it."""
    volume, ref, unlimited, limited = _with_and_without(backend, "liver", "clinical")
    before, after = (volume.with_array(r.mask).slices() > 0 for r in (unlimited, limited))
    assert abs(dice(after, ref) - dice(before, ref)) < 0.005
    assert before.sum() > 20 * ref.shape[1] * ref.shape[2] / 100, "the liver result is a large structure"


def _decisions(slices, propagated=()):
    return {t: SliceDecision(t, [], ["propagated"] if t in propagated else []) for t in slices}


@pytest.mark.parametrize("leak_limit", [2.0, 3.0])
def test_the_rule_judges_a_slice_by_its_neighbours_segmented_from_points(leak_limit):
    """Areas 100 on every slice but slice 5 (250) and slice 9 (700, propagated, no point of its own).
    Slice 5 is over 2x its neighbours but not 3x; slice 9 is over both, and having no point it is left
    empty, without a decode (no backend needed). A propagated slice is nobody's neighbour, and a slice
    with fewer than two judged neighbours is not judged (slice 12, alone after a gap)."""
    shape = (40, 40)
    out = np.zeros((13, *shape), dtype=np.uint8)
    areas = {0: 100, 1: 100, 2: 100, 3: 100, 4: 100, 5: 250, 6: 100, 7: 100, 8: 100, 9: 700, 12: 900}
    for t, a in areas.items():
        out[t].flat[:a] = 1
    processed = list(range(13))
    decisions = _decisions(processed, propagated={9})
    consensus = {t: [] for t in processed}  # no points: a judged slice is emptied, never decoded
    before = out.copy()
    _limit_leaks(out, decisions, consensus, processed, None, {}, 3.0, SegmentParams(leak_limit=leak_limit), False)
    flagged = sorted(t for t, d in decisions.items() if "leak-limited" in d.flags)
    assert flagged == ([5, 9] if leak_limit == 2.0 else [9])
    for t in range(13):
        assert np.array_equal(out[t], 0 * before[t] if t in flagged else before[t])


def test_leak_limit_and_window_are_checked():
    for bad in (1.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="leak_limit"):
            SegmentParams(leak_limit=bad).validate()
    for bad in (0, 21):
        with pytest.raises(ValueError, match="leak_window"):
            SegmentParams(leak_window=bad).validate()
    SegmentParams(leak_limit=None).validate()  # None: no limit
    assert SegmentParams().leak_limit == 2.0 and SegmentParams().leak_window == 3


def test_point_boxes_are_sized_from_the_points_whatever_the_map_shows():
    """The leak limit re-decodes a slice from boxes the prior's region cannot widen: points within
    two structure radii share a box of the radius around them plus its margin; a point further away
    gets its own; boxes stop at the slice's edge. They are the boxes ``render`` gives points off the
    salient region, so a salient map that would widen them changes nothing here."""
    from SPDSegmentLib.method.prompts import PromptPoint
    from SPDSegmentLib.method.rendering import point_boxes, render

    shape, radius = (64, 64), 4.0
    points = [PromptPoint(0, 20.0, 20.0), PromptPoint(0, 20.0, 26.0), PromptPoint(0, 50.0, 61.0)]
    boxes = sorted(p.box_rc for p in point_boxes(points, shape, radius))
    # (16..30 wide, 10 % of the 14 px extent is under the 2 px minimum margin) and (46..54, 57..65 clipped)
    assert boxes == [(14.0, 14.0, 26.0, 32.0), (44.0, 55.0, 56.0, 63.0)], boxes
    off_map = sorted(p.box_rc for p in render(points, np.zeros(shape, np.float32), 0.5, radius))
    assert boxes == off_map
    salient = np.ones(shape, np.float32)  # the prior's region covers the whole slice
    assert sorted(p.box_rc for p in render(points, salient, 0.5, radius)) != boxes, "the premise: render widens"
    with_points = point_boxes(points, shape, radius, "box", with_points=True)
    assert [(p.box_rc, len(p.points_rc)) for p in with_points] == [(boxes[0], 2), (boxes[1], 1)]
    point_mode = point_boxes(points, shape, radius, "point")  # point backends: the points, no box unless asked
    assert [p.box_rc for p in point_mode] == [None, None]
    assert [p.points_rc.tolist() for p in point_mode] == [[[20.0, 20.0], [20.0, 26.0]], [[50.0, 61.0]]]
    assert [p.box_rc for p in point_boxes(points, shape, radius, "point", with_points=True)] == boxes
    assert point_boxes([], shape, radius) == []


class _RecordingBackend:
    """The real backend, with every prompt it decodes written down (nothing is stubbed: each call
    goes on to LiteMedSAM)."""

    def __init__(self, backend):
        self._backend = backend
        self.decoded: list[tuple] = []

    def decode(self, emb, points_rc=None, box_rc=None):
        self.decoded.append((None if points_rc is None else np.asarray(points_rc).tolist(), box_rc))
        return self._backend.decode(emb, points_rc, box_rc)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_a_judged_slice_is_decoded_again_from_its_points_boxes_on_the_real_image(backend):
    """A slice with points whose mask is over twice its neighbours' is decoded again by SAM from the
    point-sized boxes around its own consensus points (``point_boxes``), never from the prior's
    region, and only that slice is decoded: on the real MR IVC, the new mask is the decode of exactly
    those boxes, far smaller than the leak it replaces, and on the vein."""
    from SPDSegmentLib.method.prompts import PromptPoint
    from SPDSegmentLib.method.rendering import point_boxes
    from SPDSegmentLib.method.windowing import volume_window

    volume, label, _ = _noisy_mr("inferior_vena_cava", "mild")
    ref = volume.with_array(label).slices() > 0
    t = 3 + int(np.argmax(ref.sum(axis=(1, 2))[3:-3]))  # the vein's widest slice with three on each side
    rows, cols = np.nonzero(ref[t])
    centre = PromptPoint(t, float(np.median(rows)), float(np.median(cols)))
    assert ref[t][centre.pixel], "the premise: the point lies on the vein"
    slices = list(range(t - 3, t + 4))
    shape = ref[t].shape
    out = np.zeros((volume.num_slices, *shape), dtype=np.uint8)
    for s in slices:
        out[s] = ref[s]  # the neighbours: the vein itself
    out[t, : shape[0] // 2] = 1  # slice t: a leak over half the image
    window = volume_window(volume, "mri")
    src = volume.slices()
    slices_u8 = {s: window.apply(src[s]) for s in slices}
    consensus = {s: [] for s in slices}
    consensus[t] = [centre]
    decisions = _decisions(slices)
    radius = 4.0
    recorder = _RecordingBackend(backend)
    _limit_leaks(out, decisions, consensus, slices, recorder, slices_u8, radius, SegmentParams(), False)

    assert [s for s in slices if "leak-limited" in decisions[s].flags] == [t]
    expected = point_boxes([centre], shape, radius, backend.prompt_mode, False)
    assert recorder.decoded == [(None, p.box_rc) for p in expected], "decoded from the point's box alone"
    again = _decode_union(backend, backend.embed(slices_u8[t]), expected, shape)
    assert np.array_equal(out[t] > 0, again)
    assert 0 < out[t].sum() < 0.1 * shape[0] * shape[1] / 2, "far smaller than the leak"
    assert dice(out[t] > 0, ref[t]) > 0.5, f"on the vein: DSC {dice(out[t] > 0, ref[t]):.2f}"
    for s in slices:
        if s != t:
            assert np.array_equal(out[s] > 0, ref[s]), f"slice {s} is not judged and stays as it was"
