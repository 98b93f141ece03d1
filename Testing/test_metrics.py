import numpy as np
import SimpleITK as sitk
from skimage.metrics import hausdorff_distance

from SPDSegmentLib.evaluation import metrics


def _pair():
    a = np.zeros((12, 30, 30), np.uint8)
    b = np.zeros_like(a)
    a[2:9, 5:18, 6:20] = 1
    b[3:11, 8:22, 4:17] = 1
    b[1, 25, 25] = 1  # a far outlier voxel drives the Hausdorff distance
    return a, b


def _sitk(arr, spacing_zyx):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return img


def _reference_surface_distances(a, b, spacing_zyx):
    """Independent reference: SimpleITK contours and signed Maurer distance maps."""
    ia, ib = _sitk(a, spacing_zyx), _sitk(b, spacing_zyx)
    out = []
    for src, dst in ((ia, ib), (ib, ia)):
        contour = sitk.GetArrayFromImage(sitk.LabelContour(src, fullyConnected=False))
        dist = sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(
            sitk.LabelContour(dst, fullyConnected=False), squaredDistance=False, useImageSpacing=True,
            insideIsPositive=False)))
        out.append(dist[contour > 0])
    return np.concatenate(out)


def test_overlap_metrics_match_simpleitk():
    a, b = _pair()
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(_sitk(a, (1, 1, 1)), _sitk(b, (1, 1, 1)))
    assert abs(metrics.dice(b, a) - f.GetDiceCoefficient()) < 1e-12
    assert abs(metrics.iou(b, a) - f.GetJaccardCoefficient()) < 1e-12


def test_surface_distances_match_simpleitk_with_anisotropic_spacing():
    a, b = _pair()
    spacing = (2.5, 0.7, 0.9)
    ref = _reference_surface_distances(a, b, spacing)
    assert abs(metrics.hd95(b, a, spacing) - np.percentile(ref, 95)) < 1e-6
    assert abs(metrics.asd(b, a, spacing) - ref.mean()) < 1e-6
    hd = sitk.HausdorffDistanceImageFilter()
    hd.Execute(_sitk(a, spacing), _sitk(b, spacing))
    assert abs(metrics.hausdorff(b, a, spacing) - hd.GetHausdorffDistance()) < 1e-6


def test_hausdorff_matches_scikit_image_on_unit_spacing():
    a, b = _pair()
    assert abs(metrics.hausdorff(b, a, (1, 1, 1)) - hausdorff_distance(a > 0, b > 0)) < 1e-9


def test_empty_mask_conventions_and_per_slice_scores():
    a, b = _pair()
    empty = np.zeros_like(a)
    assert metrics.dice(empty, empty) == 1.0 and metrics.hd95(empty, empty, (1, 1, 1)) == 0.0
    assert metrics.dice(empty, a) == 0.0 and metrics.hd95(empty, a, (1, 1, 1)) == float("inf")
    per = metrics.per_slice_dice(b, a)
    assert set(per) == {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
    assert per[1] == 0.0 and per[10] == 0.0
    scores = metrics.evaluate(b, a, (1, 1, 1))
    assert set(scores) == {"dsc", "iou", "hd95_mm", "asd_mm", "volumetric_dsc", "slice_dsc"}
    na, nb = int(a.sum()), int(b.sum())
    assert abs(scores["volumetric_dsc"] - (1 - abs(nb - na) / (nb + na))) < 1e-12
