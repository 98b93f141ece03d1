import numpy as np

from SPDSegmentLib.evaluation.noise import SEVERITIES, simulate, with_params
from SPDSegmentLib.evaluation.skeleton import centerline_from_label, resample_polyline
from SPDSegmentLib.method.prompts import slice_prompts


def _inside(volume, label, ras):
    ijk = np.round(volume.ras_to_ijk_points(ras)).astype(int)
    return label[ijk[:, 2], ijk[:, 1], ijk[:, 0]] > 0


def test_simulator_is_seeded_and_deterministic(cta):
    volume, label = cta
    clean = centerline_from_label(volume, label)
    a = simulate(clean, volume, label, "clinical", seed=3)
    b = simulate(clean, volume, label, "clinical", seed=3)
    c = simulate(clean, volume, label, "clinical", seed=4)
    np.testing.assert_array_equal(a.centerline.points_ras, b.centerline.points_ras)
    assert list(a.kinds) == list(b.kinds)
    assert a.centerline.points_ras.shape != c.centerline.points_ras.shape or \
        not np.allclose(a.centerline.points_ras, c.centerline.points_ras)


def test_drift_really_leaves_the_label_and_on_points_stay_near_it(cta):
    volume, label = cta
    clean = centerline_from_label(volume, label)
    noisy = simulate(clean, volume, label, "severe", seed=1)
    pts = noisy.centerline.points_ras
    drift = noisy.kinds == "drift"
    assert drift.sum() > 20
    assert not _inside(volume, label, pts[drift]).any()
    assert not _inside(volume, label, pts[noisy.kinds == "distractor"]).any()
    assert _inside(volume, label, pts[noisy.kinds == "on"]).mean() > 0.9


def test_gaps_really_have_no_points(cta):
    volume, label = cta
    clean = centerline_from_label(volume, label)
    model = with_params("clinical", drift_fraction=0.0, distractors_per_100mm=0.0, jitter_mm=0.0)
    noisy = simulate(clean, volume, label, model, seed=2)
    assert noisy.gaps_mm, "the clinical level must produce gaps"
    path = resample_polyline(clean.points_ras, 0.5 * volume.slice_spacing)
    arc = np.arange(len(path)) * 0.5 * volume.slice_spacing
    for a, b in noisy.gaps_mm:
        inner = path[(arc > a + 1.0) & (arc < b - 1.0)]
        dists = np.linalg.norm(noisy.centerline.points_ras[:, None, :] - inner[None], axis=2)
        assert dists.min() > 0.5 * volume.slice_spacing * 0.99, f"points found inside gap {a:.0f}-{b:.0f} mm"
    # and the slices fully inside a long gap get no prompt at all
    assert len(slice_prompts(noisy.centerline, volume)) < len(slice_prompts(clean, volume))


def test_severity_levels_are_ordered():
    mild, clinical, severe = SEVERITIES["mild"], SEVERITIES["clinical"], SEVERITIES["severe"]
    assert mild.drift_fraction < clinical.drift_fraction < severe.drift_fraction
    assert mild.gap_fraction < clinical.gap_fraction < severe.gap_fraction
