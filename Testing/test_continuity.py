"""The 3-D continuity prior (``sam-track``) on real scans with the real LiteMedSAM: a drift longer
than CPD's window is rejected, a gap longer than n slices is filled, and the box extent comes from
the image on a large structure without growing where growth leaks."""
from __future__ import annotations

import numpy as np
import pytest
from _helpers import crop_slices

from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.evaluation.harness import load_method_prior
from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.io import read_label, read_volume
from SPDSegmentLib.method.pipeline import SegmentParams, segment
from SPDSegmentLib.method.prompts import Centerline
from SPDSegmentLib.method.saliency import load_prior

DRIFT = slice(6, 17)  # 11 slices: more than CPD's window (2 n + 1 = 5) and the vote prior's (4)
GAP = slice(24, 35)  # 11 slices with no point at all


def _descending_aorta_with_drift_and_gap(cta, direction_deg: float):
    """A 40-slice slab of the CTA's descending aorta (one crossing per slice) and its label-derived
    centerline, with slices 6-16 moved 22 mm sideways (an abrupt drift bracketed by true points)
    and slices 24-34 left without points."""
    volume, label = cta
    slab, lab = crop_slices(volume, 20, 60), label[20:60].copy()
    src = slab.ras_to_src(centerline_from_label(slab, lab).points_ras)
    in_drift = (src[:, 0] >= DRIFT.start - 0.5) & (src[:, 0] < DRIFT.stop - 0.5)
    in_gap = (src[:, 0] >= GAP.start - 0.5) & (src[:, 0] < GAP.stop - 0.5)
    angle = np.radians(direction_deg)
    moved = src.copy()
    moved[in_drift, 1:] += 22.0 * np.array([np.cos(angle), np.sin(angle)]) / np.array(slab.in_plane_spacing)
    ref = slab.with_array(lab).slices() > 0
    drifted = moved[in_drift & ~in_gap]
    idx = np.round(drifted).astype(int)
    assert not ref[idx[:, 0], idx[:, 1], idx[:, 2]].any(), "the drifted points must lie off the aorta"
    return slab, ref, Centerline(slab.src_to_ras(moved[~in_gap]), ordered=False, name="drift-and-gap")


def _run(slab, centerline, backend, prior: str, **params):
    return segment(slab, centerline, backend, load_prior(prior, backend),
                   SegmentParams(method=params.pop("method", "spd"), intensity_preset="ct-angio", **params))


@pytest.fixture(scope="module")
def soft_tissue_drift(cta, backend):
    """The drift lands in the soft tissue beside the aorta (mean about 30 HU). Also run with the
    optional appearance gate (``sam-track-gated``): this aorta is dissected, and what the gate does to
    its false lumen is a limit of its own, below."""
    slab, ref, centerline = _descending_aorta_with_drift_and_gap(cta, 158.0)
    runs = {"track": _run(slab, centerline, backend, "sam-track"),
            "track, no propagation": _run(slab, centerline, backend, "sam-track", propagate=False),
            "track, appearance gate": _run(slab, centerline, backend, "sam-track-gated", leak_limit=None),
            "track, appearance gate, leak limit": _run(slab, centerline, backend, "sam-track-gated"),
            "votes": _run(slab, centerline, backend, "sam-votes", propagate=False)}
    masks = {k: slab.with_array(r.mask).slices() > 0 for k, r in runs.items()}
    return ref, runs, masks


def _points(result, *statuses):
    return [p for d in result.decisions.values() for p in d.with_status(*statuses)]


def test_a_drift_longer_than_the_window_is_rejected_whole(soft_tissue_drift):
    ref, runs, masks = soft_tissue_drift
    track = runs["track"]
    rejected = _points(track, "rejected")
    drift_slices = set(range(DRIFT.start, DRIFT.stop))
    assert {p.slice for p in rejected} >= drift_slices, "every drifted slice has its points rejected"
    assert not any(ref[p.slice][p.pixel] for p in rejected), "no point on the aorta is rejected"
    assert all(ref[p.slice][p.pixel] for p in _points(track, "kept")), "no drifted point is kept"
    assert dice(masks["track"][DRIFT], ref[DRIFT]) > 0.9, "the drift slices are segmented on the aorta"
    # the window-limited vote prior (the paper's CPD with a training-free prior) keeps this drift
    votes_kept = _points(runs["votes"], "kept")
    assert sum(not ref[p.slice][p.pixel] for p in votes_kept) >= 8
    assert dice(masks["votes"][DRIFT], ref[DRIFT]) < 0.3


def test_a_gap_longer_than_n_slices_is_filled_by_propagation(soft_tissue_drift):
    ref, runs, masks = soft_tissue_drift
    assert not any(p.slice in range(GAP.start, GAP.stop) for p in _points(runs["track"], "kept"))
    assert all(masks["track"][t].any() for t in range(GAP.start, GAP.stop)), "no gap slice is left empty"
    assert dice(masks["track"][GAP], ref[GAP]) > 0.75
    # without propagation CPD borrows only from n = 2 slices on each side: the middle stays empty
    without = masks["track, no propagation"]
    assert not any(without[t].any() for t in range(GAP.start + 3, GAP.stop - 3))
    assert dice(masks["track"][GAP], ref[GAP]) > dice(without[GAP], ref[GAP]) + 0.3


def test_the_appearance_gate_keeps_the_drift_rejected_and_the_gap_filled(soft_tissue_drift):
    ref, runs, masks = soft_tissue_drift
    gated = runs["track, appearance gate"]
    assert {p.slice for p in _points(gated, "rejected")} >= set(range(DRIFT.start, DRIFT.stop))
    assert all(ref[p.slice][p.pixel] for p in _points(gated, "kept")), "no drifted point is kept"
    assert all(masks["track, appearance gate"][t].any() for t in range(GAP.start, GAP.stop))
    # 0.77 measured (0.79 before the size limit on restored pieces); 0.97 ungated
    assert dice(masks["track, appearance gate"][DRIFT], ref[DRIFT]) > 0.7
    assert dice(masks["track, appearance gate"][GAP], ref[GAP]) > 0.5  # 0.59 measured (0.60 before); 0.84 ungated


@pytest.mark.xfail(strict=True, reason="known limit of the appearance gate forced on CT (sam-track-gated; the default "
                                       "gates MRI only): the aorta is dissected and the label holds the darker false "
                                       "lumen; where a slice has no point of its own (the gap, the rejected drift) "
                                       "the appearance gate cannot put the false lumen back, so the propagated box "
                                       "covers the bright true lumen only (DSC 0.77 against 0.97 on the drift, "
                                       "0.59 against 0.84 on the gap, without the gate; docs/method.md, 'The "
                                       "appearance gate')")
def test_known_limit_the_appearance_gate_trims_a_false_lumen_where_no_point_lies(soft_tissue_drift):
    ref, _, masks = soft_tissue_drift
    for stretch in (DRIFT, GAP):
        assert dice(masks["track, appearance gate"][stretch], ref[stretch]) > \
            dice(masks["track"][stretch], ref[stretch]) - 0.02


@pytest.mark.xfail(strict=True, reason="known limit of the appearance gate forced on CT together with the leak limit: "
                                       "masks of propagated gap slices come out over twice those of the point slices "
                                       "beside the gap, so the leak limit empties them (docs/method.md, 'The leak "
                                       "limit')")
def test_known_limit_the_gate_forced_on_ct_and_the_leak_limit_empty_gap_slices(soft_tissue_drift):
    _, _, masks = soft_tissue_drift
    assert all(masks["track, appearance gate, leak limit"][t].any() for t in range(GAP.start, GAP.stop))


@pytest.mark.xfail(strict=True, reason="known limit: an abrupt 22 mm drift onto the vertebra for 11 slices is "
                                       "taken as the target, because one SAM mask around spine and aorta collects "
                                       "the aorta's points too (docs/method.md, 'Known limits of the continuity step')")
def test_known_limit_a_long_drift_onto_the_vertebra(cta, backend):
    slab, ref, centerline = _descending_aorta_with_drift_and_gap(cta, 0.0)
    track = _run(slab, centerline, backend, "sam-track")
    assert not any(ref[p.slice][p.pixel] == 0 for p in _points(track, "kept"))


@pytest.fixture(scope="module")
def abdomen_ct():
    volume = read_volume(sample_data.path("abdomen_ct/image.nii.gz"), "abdomen_ct")
    return volume, sample_data.path("abdomen_ct/labels.nii.gz")


def _extent_vs_fixed_boxes(abdomen_ct, backend, label_value: int) -> tuple[float, float, float]:
    """DSC with box extent from the image (the default), DSC with fixed box sizes (the ablation), and
    the default mask's volume over the fixed boxes' mask volume: a clean centerline, so only the
    extent differs."""
    volume, labels = abdomen_ct
    label = read_label(labels, volume, label_value=label_value)
    ref = volume.with_array(label).slices() > 0
    centerline = centerline_from_label(volume, label)
    out = {}
    for prior in ("sam-track", "sam-track/fixed-boxes"):
        result = segment(volume, centerline, backend, load_method_prior(prior, backend),
                         SegmentParams(method="spd", intensity_preset="ct-abdomen"))
        out[prior] = volume.with_array(result.mask).slices() > 0
    return (dice(out["sam-track"], ref), dice(out["sam-track/fixed-boxes"], ref),
            out["sam-track"].sum() / max(out["sam-track/fixed-boxes"].sum(), 1))


def test_a_large_structure_takes_its_box_extent_from_the_image(abdomen_ct, backend):
    """CT colon (label 20): loops far wider than a box sized from the points."""
    extent, fixed, _ = _extent_vs_fixed_boxes(abdomen_ct, backend, 20)
    assert extent > fixed + 0.25, (extent, fixed)


def test_the_gated_extent_does_not_grow_where_plain_growth_leaks(abdomen_ct, backend):
    """CT aorta (label 52): plain box growth lost 6 Dice points on the aorta by following leaks into
    the neighbouring tissue; the gated extent must leave it as the fixed boxes have it."""
    extent, fixed, volume_ratio = _extent_vs_fixed_boxes(abdomen_ct, backend, 52)
    assert extent > 0.8 and extent >= fixed - 0.01, (extent, fixed)
    assert volume_ratio < 1.05, "the mask does not grow beyond what the fixed boxes give"


def _target_precision(result, ref) -> float:
    """Share of the continuity target's mask (over its slices) that lies on the label."""
    target = next(o for o in result.objects if result.reasons[o.oid].startswith("target"))
    inside = sum(int(np.logical_and(m, ref[t]).sum()) for t, m in target.masks.items())
    return inside / max(sum(int(m.sum()) for m in target.masks.values()), 1)


def _ct_dicom_structure(structure: str, seed: int = 0):
    """(volume, label slices as bool, the label's centerline with clinical noise, noise seed
    ``seed``) of one TotalSegmentator structure in the real CT-DICOM sample."""
    from SPDSegmentLib.evaluation.noise import simulate
    from SPDSegmentLib.io import resample_like

    volume = read_volume(sample_data.path("abdomen_ct_dicom/image"), "abdomen_ct_dicom")
    value = next(v for v, name in sample_data.class_map("abdomen_ct_dicom").items() if name == structure)
    labels = resample_like(read_volume(sample_data.path("abdomen_ct_dicom/labels.nii.gz")), volume).array
    label = (labels == value).astype(np.uint8)
    noisy = simulate(centerline_from_label(volume, label), volume, label, "clinical", seed=seed).centerline
    return volume, volume.with_array(label).slices() > 0, noisy


def _spd_with(volume, noisy, backend, params, **segment_params):
    """One SPD run with the continuity prior under ``params``: (its tracking result, the SPD result)."""
    prior = load_prior("sam-track", backend)
    prior.params = params
    result = segment(volume, noisy, backend, prior,
                     SegmentParams(method="spd", intensity_preset="ct-abdomen", **segment_params))
    return prior.last, result


@pytest.fixture(scope="module")
def portal_vein(backend):
    """The CT-DICOM portal and splenic vein with the default rules: shared by the tests that switch
    one rule off, so the default run is made once."""
    from SPDSegmentLib.method.continuity import TrackingParams

    volume, ref, noisy = _ct_dicom_structure("portal_vein_and_splenic_vein")
    return volume, ref, noisy, *_spd_with(volume, noisy, backend, TrackingParams())


def test_a_container_and_the_part_the_point_is_on_are_both_seeded_and_the_curve_decides(backend):
    """The part-hypotheses rule (``part_hypotheses``, on by default). CT-DICOM colon, clinical noise: at
    several seeds SAM's surest enclosed mask is a large region around the colon loop the point is on.
    Seeding only that container made it the target (a fifth of it on the colon); seeding the loop as a
    second hypothesis lets the curve's later points, which stay in the loop, make the loop the target.
    Measured without the leak limit (the final pass's own rule, which takes back the container's
    ballooned slices): with it, the two end within two points of each other (0.569 and 0.581)."""
    from SPDSegmentLib.method.continuity import TrackingParams

    volume, ref, noisy = _ct_dicom_structure("colon")
    runs, limited = {}, {}
    for name, params in (("hypotheses", TrackingParams()),
                         ("container only", TrackingParams(part_hypotheses=False))):
        tracked, result = _spd_with(volume, noisy, backend, params, leak_limit=None)
        runs[name] = (tracked, dice(volume.with_array(result.mask).slices() > 0, ref))
        with_limit = segment(volume, noisy, backend, load_prior("sam-track", backend),
                             SegmentParams(method="spd", intensity_preset="ct-abdomen"), saliency=result.saliency_maps)
        limited[name] = dice(volume.with_array(with_limit.mask).slices() > 0, ref)
    assert abs(limited["hypotheses"] - limited["container only"]) < 0.03, limited
    tracked, spd_dice = runs["hypotheses"]
    tracked_single, spd_dice_single = runs["container only"]
    parts = [o for o in tracked.objects if any(
        t in c.masks and c.masks[t].sum() > 3 * o.masks[t].sum() and np.logical_and(c.masks[t], o.masks[t]).sum()
        >= 0.9 * o.masks[t].sum() for c in tracked.objects if c is not o for t in o.seeded)]
    assert parts, "some seed gave a container and a part"
    assert _target_precision(tracked, ref) > _target_precision(tracked_single, ref) + 0.15
    assert spd_dice > spd_dice_single + 0.03, (spd_dice, spd_dice_single)


def _disc(centre: tuple[int, int], radius: float, shape=(48, 48)) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def _object(oid: int, mask: np.ndarray, slices, support: dict[int, int], shared: dict[int, int] | None = None):
    from SPDSegmentLib.method.continuity import TrackedObject

    o = TrackedObject(oid, {t: mask for t in slices}, {t: 0.9 for t in slices}, dict(support))
    o.seeded = {min(support)}
    o.shared = dict(shared or {})
    return o


def test_a_structure_whose_points_its_parts_split_still_rejects_a_drift_that_outnumbers_it():
    """Specks inside an aortic lumen are seeded as parts and take the later points as their
    smallest holders: the aorta keeps 9 (5 of them its own), four specks 4 each, and the drift
    beside it has 19. Pooled with its parts (their shared seeding points once), the aorta's family
    has 21, the aorta is its best-supported member, and the drift, which the family's points bracket,
    is rejected. Without the part links the drift would be the target."""
    from SPDSegmentLib.method.continuity import TrackingParams, select

    aorta = _object(0, _disc((24, 24), 8), range(21), {0: 2, 1: 2, 19: 3, 20: 2})
    specks = [_object(1, _disc((24, 24), 1), range(3, 6), {3: 2, 4: 1, 5: 1}, shared={3: 1}),
              _object(2, _disc((22, 26), 1), range(14, 17), {14: 2, 15: 1, 16: 1}, shared={14: 1}),
              _object(3, _disc((26, 22), 1), range(17, 19), {17: 2, 18: 2}, shared={17: 1}),
              _object(4, _disc((24, 20), 1), range(2, 4), {2: 2, 3: 2}, shared={2: 1})]
    drift = _object(5, _disc((6, 6), 3), range(6, 14), {**{t: 2 for t in range(6, 13)}, 13: 5})
    aorta.parts = {1, 2, 3, 4}
    kept, reasons = select([aorta, *specks, drift], TrackingParams())
    assert reasons[0].startswith("target"), reasons
    assert 5 not in kept and "drift excursion" in reasons[5], reasons
    assert {1, 2, 3, 4} <= set(kept), "the specks inside the target stay with it"
    aorta.parts = set()
    unlinked, _ = select([aorta, *specks, drift], TrackingParams())
    assert unlinked[0] == 5, "the check above must depend on the pooling"


def test_a_vein_the_curve_follows_inside_an_organ_is_the_target_not_the_organ():
    """The liver and the vein inside it are seeded together from one point (both count it); the
    curve's later points are all the vein's. The vein is the target and the liver, whose only point
    is the shared one, is rejected as a larger region around it."""
    from SPDSegmentLib.method.continuity import TrackingParams, select

    liver = _object(0, _disc((24, 24), 18), range(21), {0: 2})
    vein = _object(1, _disc((24, 24), 2), range(21), {t: 2 for t in range(21)}, shared={0: 2})
    liver.parts = {1}
    kept, reasons = select([liver, vein], TrackingParams())
    assert kept == [1], reasons
    assert "larger region" in reasons[0], reasons


def test_two_clicks_inside_a_vessel_choose_the_vessel_not_the_lumen_part_seeded_with_it():
    """Two clicks on consecutive slices in the middle of an aorta: the seed gives the aorta and,
    as a part, the bright lumen inside it; the second click lands in the lumen too (the smallest
    holder). A part needs points on 3 slices besides its seeding one to take over from its
    container, so the aorta is the target; with the curve's points on 8 more slices, the part is."""
    from SPDSegmentLib.method.continuity import TrackingParams, select

    aorta = _object(0, _disc((24, 24), 12), range(4, 9), {5: 1})
    lumen = _object(1, _disc((22, 22), 3), range(4, 9), {5: 1, 6: 1}, shared={5: 1})
    lumen.seeded = {5}
    aorta.parts = {1}
    _kept, reasons = select([aorta, lumen], TrackingParams())
    assert reasons[0].startswith("target"), reasons
    followed = _object(1, _disc((22, 22), 3), range(4, 15), {t: 1 for t in range(5, 15)}, shared={5: 1})
    _kept, reasons = select([aorta, followed], TrackingParams())
    assert reasons[1].startswith("target"), reasons


def test_point_depth_is_one_in_the_middle_and_near_zero_on_the_rim():
    from SPDSegmentLib.method.continuity import point_depths

    mask = _disc((24, 24), 10)
    depths = point_depths(mask, np.array([[24, 24], [24, 33], [24, 29], [2, 2]], dtype=float))
    assert len(depths) == 3, "a point outside the mask has no depth"
    assert depths[0] == 1.0 and depths[1] < 0.2 and 0.4 < depths[2] < 0.6, depths


def test_a_neighbour_whose_rim_the_curve_runs_along_gives_way_to_the_part_it_runs_through():
    """One seed gives the liver and, as a part, the portal vein beside its edge. The liver holds most
    of the curve's points, but they lie along its rim (the vein runs at the liver's edge), and the
    vein's own points are on too few slices to take over by count. The rim rule makes the vein the
    target and rejects the liver; without it the liver is the target."""
    from SPDSegmentLib.method.continuity import TrackingParams, select

    liver = _object(0, _disc((24, 24), 18), range(10), {t: 4 for t in range(10)})
    liver.depths = [0.1, 0.15, 0.2, 0.12, 0.18, 0.6, 0.1, 0.14]
    vein = _object(1, _disc((24, 40), 3), range(10), {0: 3, 1: 3, 2: 2}, shared={0: 3})
    vein.depths = [0.8, 0.7, 0.9, 0.6]
    liver.parts = {1}
    kept, reasons = select([liver, vein], TrackingParams())
    assert kept == [1] and reasons[1].startswith("target"), reasons
    assert "rim" in reasons[0], reasons
    kept, reasons = select([liver, vein], TrackingParams(rim_depth=None))
    assert reasons[0].startswith("target"), "the check above must depend on the rim rule"


def test_a_family_beside_the_curve_gives_way_only_to_one_the_curve_runs_through():
    """A well-supported object whose points lie near its wall (a displaced curve at severe noise)
    stays the target against a speck of two points, about which nothing is known. It gives way to
    an object the curve runs through when that one has at least half its points."""
    from SPDSegmentLib.method.continuity import TrackingParams, select

    vessel = _object(0, _disc((24, 24), 12), range(20), {t: 2 for t in range(20)})
    vessel.depths = [0.2] * 30
    speck = _object(1, _disc((6, 6), 2), range(3), {1: 2})
    _kept, reasons = select([vessel, speck], TrackingParams())
    assert reasons[0].startswith("target"), reasons
    through = _object(2, _disc((40, 40), 4), range(20), {t: 1 for t in range(20)})
    through.depths = [0.7] * 20
    _kept, reasons = select([vessel, speck, through], TrackingParams())
    assert reasons[2].startswith("target") and "rim" in reasons[0], reasons


def test_the_liver_beside_the_portal_vein_is_not_taken_for_it(portal_vein, backend):
    """Real CT (CT-DICOM sample), portal and splenic vein, clinical noise: SAM's surest enclosed mask
    at the first seed is a large region beside the vein, with the curve's points along its rim. With
    the rim rule the continuity target is a mask on the vein, and SPD's DSC rises."""
    from SPDSegmentLib.method.continuity import TrackingParams

    volume, ref, noisy, *default = portal_vein
    runs = {}
    for name, (tracked, result) in (("rim rule", default),
                                    ("without", _spd_with(volume, noisy, backend, TrackingParams(rim_depth=None)))):
        runs[name] = (_target_precision(tracked, ref), dice(volume.with_array(result.mask).slices() > 0, ref))
    assert runs["without"][0] < 0.1, "the case shows the failure: the target is the neighbour"
    assert runs["rim rule"][0] > runs["without"][0] + 0.2, runs
    assert runs["rim rule"][1] > runs["without"][1] + 0.1, runs


def test_a_point_belongs_to_the_smallest_mask_that_holds_it_whatever_the_order():
    """A point inside a vessel and 2 mm from a smaller speck beside it is the vessel's, in either
    order of the live objects (the speck is only near it; the vessel holds it)."""
    from SPDSegmentLib.method.continuity import Tracker

    slice_u8 = np.zeros((48, 48), np.uint8)
    tracker = Tracker(None, {0: slice_u8}, {}, (1.0, 1.0))
    vessel = _object(0, _disc((24, 24), 10), [0], {0: 1})
    speck = _object(1, _disc((24, 37), 1), [0], {0: 1})  # 2 px outside the point at (24, 34)
    point = np.array([24.0, 34.0])
    assert tracker._owner(0, point, [vessel, speck]) is vessel
    assert tracker._owner(0, point, [speck, vessel]) is vessel
    inner = _object(2, _disc((24, 32), 3), [0], {0: 1})  # holds the point and is smaller
    assert tracker._owner(0, point, [vessel, inner, speck]) is inner
    assert tracker._owner(0, np.array([24.0, 40.0]), [speck, vessel]) is speck, "near only: the nearest small mask"


def test_a_point_group_along_the_slice_is_cut_into_pieces():
    """A run of points inside one slice (the curve in the plane) seeds in pieces of at most 12 mm;
    a compact group stays one piece."""
    from SPDSegmentLib.method.continuity import split_along

    spacing = np.array([0.8, 0.8])
    run = np.c_[np.full(40, 100.0), 100.0 + np.arange(40) * 1.25]  # 40 points over 39 mm along a row
    pieces = split_along(run, spacing, 12.0)
    assert len(pieces) == 4 and sum(len(p) for p in pieces) == len(run)
    for piece in pieces:
        assert (piece[:, 1].max() - piece[:, 1].min()) * spacing[1] <= 12.0
    steps = np.diff([p[:, 1].mean() for p in pieces])
    assert np.all(steps > 0) or np.all(steps < 0), "pieces are consecutive along the run (either direction)"
    compact = np.array([[50.0, 50.0], [52.0, 51.0], [51.0, 53.0], [49.0, 52.0]])
    assert len(split_along(compact, spacing, 12.0)) == 1


def test_an_in_plane_run_of_the_curve_seeds_along_its_length(portal_vein, backend):
    """The in-plane pieces rule (``seed_piece_mm``, 12 mm by default). CT-DICOM portal and splenic vein,
    clinical noise: the splenic vein runs inside the axial slices, so single slices hold long runs of
    points. One seed at a run's median misses most of it; seeding every 12 mm piece lets the tracker
    hold the vein along the run."""
    from SPDSegmentLib.method.continuity import TrackingParams, split_along

    volume, ref, noisy, _, result = portal_vein
    _, single = _spd_with(volume, noisy, backend, TrackingParams(seed_piece_mm=None))
    scores = {name: dice(volume.with_array(r.mask).slices() > 0, ref)
              for name, r in (("pieces", result), ("one seed per group", single))}
    runs = [t for t, points in result.prompts.items() for g in {q.group for q in points}
            if len(split_along(np.array([[q.row, q.col] for q in points if q.group == g]),
                               np.asarray(volume.in_plane_spacing), 12.0)) > 1]
    assert len(runs) >= 2, "the curve runs along some slices"
    assert scores["pieces"] > scores["one seed per group"] + 0.03, scores


def test_propagation_skips_a_region_many_times_thicker_than_the_structure():
    """A slice without consensus points takes the prior's regions there as prompts; a region whose
    inscribed radius is beyond ``max_radius_px`` is a neighbour, not the structure."""
    from SPDSegmentLib.method.rendering import region_prompts

    rr, cc = np.mgrid[:200, :200]
    saliency = np.zeros((200, 200))
    saliency[(rr - 50) ** 2 + (cc - 50) ** 2 <= 4 ** 2] = 1.0  # the vessel: radius 4 px
    saliency[(rr - 130) ** 2 + (cc - 130) ** 2 <= 30 ** 2] = 1.0  # an organ beside it: radius 30 px
    both = region_prompts(saliency, 0.5)
    gated = region_prompts(saliency, 0.5, max_radius_px=3 * 4.0)
    assert len(both) == 2 and len(gated) == 1
    r0, c0, r1, c1 = gated[0].box_rc
    assert r0 < 50 < r1 and c0 < 50 < c1 and r1 - r0 < 20, "the vessel's box is the one left"


def test_propagation_gate_on_the_real_portal_vein(backend):
    """CT-DICOM portal and splenic vein, clinical noise of seed 1 (a draw the evaluation does not
    score): on slice 10 the prior's regions include a neighbour far thicker than the vein; the gate
    (regions over 3x the structure radius get no prompt, the default) drops its 393 px, none of them
    on the vein, and adds nothing."""
    volume, ref, noisy = _ct_dicom_structure("portal_vein_and_splenic_vein", seed=1)
    prior = load_prior("sam-track", backend)
    # the propagation gate alone: the leak limit, which judges the same slices afterwards, is off
    gated = segment(volume, noisy, backend, prior, SegmentParams(intensity_preset="ct-abdomen", leak_limit=None))
    assert gated.params.propagate_radius_ratio == SegmentParams().propagate_radius_ratio == 3.0
    ungated = segment(volume, noisy, backend, prior,
                      SegmentParams(intensity_preset="ct-abdomen", propagate_radius_ratio=None, leak_limit=None),
                      saliency=gated.saliency_maps)
    g, u = (volume.with_array(r.mask).slices() > 0 for r in (gated, ungated))
    dropped = u & ~g
    assert not (g & ~u).any(), "the gate only removes prompts"
    assert dropped.sum() >= 200 and not (dropped & ref).any(), "what it removes is off the vein"
    assert {t for t, d in gated.decisions.items() if "propagated" in d.flags} >= set(np.nonzero(dropped)[0])
    assert dice(g, ref) > dice(u, ref) + 0.02
