"""The appearance gate on real scans: it trims the continuity prior's leak into tissue that looks
nothing like the centerline's points (MR aorta) and keeps a piece of different content that the curve
runs through (air in the CT colon). The default ``sam-track`` gates MRI only; ``sam-track-gated`` and
``sam-track-ungated`` force it on and off."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.evaluation.noise import simulate
from SPDSegmentLib.evaluation.skeleton import centerline_from_label
from SPDSegmentLib.io import read_volume
from SPDSegmentLib.method.appearance_gate import AppearanceGate, gate_maps, gate_slice, point_intensity_model
from SPDSegmentLib.method.pipeline import SegmentParams, segment
from SPDSegmentLib.method.prompts import PromptPoint, slice_prompts
from SPDSegmentLib.method.saliency import TrackPrior, load_prior


def _structure(case: str, name: str):
    volume = read_volume(sample_data.path(f"{case}/image.nii.gz"), case)
    value = next(v for v, n in sample_data.class_map(case).items() if n == name)
    label = (read_volume(sample_data.path(f"{case}/labels.nii.gz")).array == value).astype(np.uint8)
    return volume, label


def _precision_recall(maps: dict[int, np.ndarray], ref: np.ndarray) -> tuple[float, float]:
    tp = sum(int((m > 0.5)[ref[t]].sum()) for t, m in maps.items())
    salient = sum(int((m > 0.5).sum()) for m in maps.values())
    truth = sum(int(ref[t].sum()) for t in maps)
    return tp / max(salient, 1), tp / max(truth, 1)


@pytest.fixture(scope="module")
def mr_aorta(backend):
    """The MR aorta with clinical noise of seed 1 (a draw the evaluation does not score): the tracked
    objects run into the bright tissue beside the small aorta (precision about 0.1)."""
    volume, label = _structure("abdomen_mr", "aorta")
    noisy = simulate(centerline_from_label(volume, label), volume, label, "clinical", seed=1).centerline
    ungated = segment(volume, noisy, backend, load_prior("sam-track-ungated", backend),
                      SegmentParams(intensity_preset="mri"))
    return volume, volume.with_array(label).slices() > 0, noisy, ungated


def test_the_gate_trims_the_prior_to_tissue_like_the_points(mr_aorta, backend):
    volume, ref, noisy, ungated = mr_aorta
    prompts = slice_prompts(noisy, volume)
    gated, stats = gate_maps(ungated.saliency_maps, volume.slices(), prompts, AppearanceGate())
    p0, r0 = _precision_recall(ungated.saliency_maps, ref)
    p1, r1 = _precision_recall(gated, ref)
    assert p0 < 0.3 and p1 > 2 * p0, f"precision {p0:.2f} -> {p1:.2f}"
    assert r1 > 0.9 * r0, f"recall {r0:.2f} -> {r1:.2f}: the gate must not cut the aorta itself"
    assert 0.3 < stats["removed_fraction"] < 1.0
    assert all(not (g > 0.5)[~(m > 0.5)].any() for g, m in zip(gated.values(), ungated.saliency_maps.values())), \
        "the gate only removes"
    spd = segment(volume, noisy, backend, load_prior("sam-track-ungated", backend),
                  SegmentParams(intensity_preset="mri"), saliency=gated)
    before = dice(volume.with_array(ungated.mask).slices() > 0, ref)
    after = dice(volume.with_array(spd.mask).slices() > 0, ref)
    assert after > before + 0.05, f"SPD DSC {before:.3f} -> {after:.3f}"


def test_the_default_prior_gates_an_mri_run_end_to_end_and_reports_it(mr_aorta, backend):
    volume, _, noisy, ungated = mr_aorta
    prior = load_prior("sam-track", backend)
    assert isinstance(prior, TrackPrior) and prior.gate == AppearanceGate()
    result = segment(volume, noisy, backend, prior, SegmentParams(intensity_preset="auto"))  # auto: MRI here
    expected, _ = gate_maps(ungated.saliency_maps, volume.slices(), slice_prompts(noisy, volume), AppearanceGate())
    assert sorted(result.saliency_maps) == sorted(expected)
    assert all(np.array_equal(result.saliency_maps[t] > 0.5, expected[t] > 0.5) for t in expected)
    assert prior.stats["appearance_gate"]["removed_fraction"] > 0.3


def test_which_runs_each_prior_name_gates(backend):
    default, gated, ungated = (load_prior(n, backend) for n in ("sam-track", "sam-track-gated", "sam-track-ungated"))
    assert default.gates("mri") and not any(default.gates(p) for p in ("ct-abdomen", "ct-angio", "ct-soft"))
    assert gated.gates("mri") and gated.gates("ct-angio") and gated.name == "sam-track-gated"
    assert not ungated.gates("mri") and not ungated.gates("ct-abdomen") and ungated.name == "sam-track-ungated"


def test_a_piece_of_other_content_that_holds_a_point_is_kept():
    """CT colon: on a slice where the colon holds both air and soft-tissue content, with the model
    centred on the content, an air pocket holding one of the slice's points stays salient; the same
    pocket without a point goes."""
    volume, label = _structure("abdomen_ct", "colon")
    slices, ref = volume.slices(), volume.with_array(label).slices() > 0
    gate = AppearanceGate()
    content = ref & (slices > -200)  # stool and wall: what the model is centred on here
    t = int(np.argmax(content.sum(axis=(1, 2))))
    air, _ = ndimage.label(ref[t] & (slices[t] < -600))
    sizes = np.bincount(air.ravel())[1:]
    assert len(sizes) and sizes.max() >= 30, "the sample's colon holds air on its fullest slice"
    pocket = int(np.argmax(sizes)) + 1
    inside = ndimage.distance_transform_edt(air == pocket)
    r, c = np.unravel_index(int(np.argmax(inside)), inside.shape)
    own = [PromptPoint(t, float(r), float(c))]
    values = slices[t][content[t]]
    mu = float(np.median(values))
    sigma = max(1.4826 * float(np.median(np.abs(values - mu))), 10.0)
    with_point = gate_slice(ref[t].astype(np.float32), slices[t], own, mu, sigma, gate) > 0.5
    without = gate_slice(ref[t].astype(np.float32), slices[t], [], mu, sigma, gate) > 0.5
    assert with_point[air == pocket].mean() > 0.95, "the pocket the curve runs through stays"
    assert without[air == pocket].mean() < 0.05, "without a point there, it is not like the points"
    assert without[content[t]].mean() > 0.5, "the content stays either way"


def test_the_intensity_model_is_robust_to_a_drifted_minority():
    slices = np.zeros((1, 20, 20), dtype=np.float32)
    slices[0, :, :10] = 100.0
    slices[0, :, 10:] = 400.0
    points = {0: [PromptPoint(0, 10.0, float(c)) for c in (1, 2, 3, 4, 5, 6, 15)]}
    mu, sigma = point_intensity_model(slices, points, 0.03)
    assert mu == 100.0 and sigma == pytest.approx(0.03 * 300.0)
    with pytest.raises(ValueError, match="at least one prompt point"):
        point_intensity_model(slices, {}, 0.03)
    with pytest.raises(ValueError, match="positive"):
        AppearanceGate(spread=0)


def test_the_ablation_keeps_the_earlier_priors_ungated(backend):
    from SPDSegmentLib.evaluation.harness import PROMPT_METHODS, load_method_prior

    assert PROMPT_METHODS["spd-extent"].prior == "sam-track-ungated"
    assert load_method_prior("sam-track/fixed-boxes", backend).gate is None
    assert PROMPT_METHODS["spd"].prior is None  # the run's configured prior: sam-track, gated on MRI


def test_gate_slice_fills_holes_restores_held_pieces_and_takes_a_point_on_the_edge():
    """Synthetic, every rule at once: a ring of target tissue around a hole of other content is kept
    whole; a piece of other content beside it goes, unless one of the slice's points lies on it (the
    last row and column included: ``slice_prompts`` puts an edge crossing on the edge pixel)."""
    image = np.full((20, 20), 100.0, dtype=np.float32)
    image[8:11, 8:11] = 900.0  # a hole of other content inside the target
    image[:, 15:] = 900.0  # a neighbour of other content, along the right edge
    saliency = np.zeros((20, 20), dtype=np.float32)
    saliency[4:15, 4:20] = 1.0  # the map: the target (cols 4-14) and the neighbour (cols 15-19)
    gate = AppearanceGate(smoothing_px=0.01)
    plain = gate_slice(saliency, image, [], 100.0, 10.0, gate) > 0.5
    assert plain[4:15, 4:15].all(), "the hole inside the target is filled back"
    assert not plain[:, 15:].any(), "the neighbour goes"
    held = gate_slice(saliency, image, [PromptPoint(0, 19.0, 19.0)], 100.0, 10.0, gate) > 0.5
    assert not held[4:15, 15:].any(), "a point in the corner, off the map, holds nothing"
    edge = gate_slice(saliency, image, [PromptPoint(0, 14.0, 19.0)], 100.0, 10.0, gate) > 0.5
    assert edge[4:15, 15:].all(), "a point on the neighbour (in its last column) keeps it"
    assert not gate_slice(np.zeros_like(saliency), image, [], 100.0, 10.0, gate).any()


def test_a_held_piece_larger_than_what_the_gate_kept_is_not_put_back():
    """A drifted point on a large neighbour (the liver beside a small vein) does not bring the
    neighbour back: a held piece is put back only up to ``restore_limit`` times the slice's kept
    area; with ``restore_limit=None`` (the earlier rule) it is put back whatever its size."""
    image = np.full((30, 30), 900.0, dtype=np.float32)
    image[10:14, 2:6] = 100.0  # the target: 16 px like the points
    saliency = np.zeros((30, 30), dtype=np.float32)
    saliency[10:14, 2:6] = 1.0
    saliency[2:28, 6:28] = 1.0  # a neighbour of other content joined to it: 572 px
    on_neighbour = [PromptPoint(0, 20.0, 20.0)]
    strict = gate_slice(saliency, image, on_neighbour, 100.0, 10.0, AppearanceGate(smoothing_px=0.01)) > 0.5
    assert strict[10:14, 2:6].all() and strict.sum() == 16, "only the target stays"
    earlier = AppearanceGate(smoothing_px=0.01, restore_limit=None)
    assert (gate_slice(saliency, image, on_neighbour, 100.0, 10.0, earlier) > 0.5).sum() == 16 + 572
    loose = AppearanceGate(smoothing_px=0.01, restore_limit=40.0)  # 572 <= 40 x 16
    assert (gate_slice(saliency, image, on_neighbour, 100.0, 10.0, loose) > 0.5).sum() == 16 + 572
    nothing_kept = gate_slice(saliency * (image > 500), image, on_neighbour, 100.0, 10.0,
                              AppearanceGate(smoothing_px=0.01)) > 0.5
    assert not nothing_kept.any(), "with nothing like the points on the slice, no piece is put back"
    with pytest.raises(ValueError, match="restore_limit"):
        AppearanceGate(restore_limit=-1.0)


def test_the_default_prior_does_not_gate_a_ct_run(cta_slab, cta_centerline, backend):
    volume, _ = cta_slab
    default, ungated = load_prior("sam-track", backend), load_prior("sam-track-ungated", backend)
    runs = [segment(volume, cta_centerline, backend, prior, SegmentParams(intensity_preset="auto"))
            for prior in (default, ungated)]
    assert "appearance_gate" not in default.stats, "auto reads this CTA as CT: no gate"
    assert all(np.array_equal(runs[0].saliency_maps[t], runs[1].saliency_maps[t]) for t in runs[1].saliency_maps)
    assert np.array_equal(runs[0].mask, runs[1].mask)
