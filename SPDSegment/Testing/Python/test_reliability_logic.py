"""The MRML logic refuses what the engine refuses, through the same checks, and never changes the
scene on a refusal, a failure or a cancel: the node count and a hash of every volume and segment
array are the same before and after. Awkward-but-valid inputs (a curve under a transform, an output
segmentation on another grid) work."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import slicer
import vtk

from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.frontends.mrml_logic import SPDInputError, SPDSegmentMRMLLogic
from SPDSegmentLib.method.pipeline import Cancelled

K0, K1 = 60, 70


@pytest.fixture(scope="module")
def cta(cta_case):
    return cta_case


@pytest.fixture(scope="module")
def logic():
    return SPDSegmentMRMLLogic()


def _volume_node(volume, array=None, name="CT"):
    m = volume.ijk_to_ras.copy()
    m[:3, 3] = volume.ijk_to_ras_points([[0, 0, K0]])[0]
    data = volume.array[K0:K1].copy() if array is None else array
    return slicer.util.addVolumeFromArray(data, m, name)


def _curve(centerline, volume, cls="vtkMRMLMarkupsCurveNode", shift=(0.0, 0.0, 0.0)):
    src = volume.ras_to_src(centerline.points_ras)
    pts = centerline.points_ras[(src[:, 0] > K0 - 1) & (src[:, 0] < K1)][::3] + np.asarray(shift)
    node = slicer.mrmlScene.AddNewNodeByClass(cls, "centerline")
    slicer.util.updateMarkupsControlPointsFromArray(node, pts)
    return node


def scene_state():
    digest = hashlib.sha256()
    for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
        digest.update(node.GetID().encode())
        digest.update(slicer.util.arrayFromVolume(node).tobytes())
    for seg in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
        for sid in seg.GetSegmentation().GetSegmentIDs():
            digest.update(sid.encode())
            array = slicer.util.arrayFromSegmentInternalBinaryLabelmap(seg, sid)  # creates no nodes
            digest.update(b"empty" if array is None else array.tobytes())
    return slicer.mrmlScene.GetNumberOfNodes(), digest.hexdigest()


def _transform(translation=(0.0, 0.0, 0.0)):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    for i, v in enumerate(translation):
        m.SetElement(i, 3, v)
    node.SetMatrixTransformToParent(m)
    return node


def _case_table():
    """(id, build(cta) -> (args, kwargs) for logic.process, message regex)."""
    def under_transform(cta):
        volume, _, centerline = cta
        node = _volume_node(volume)
        node.SetAndObserveTransformNodeID(_transform((5, 0, 0)).GetID())
        return (node, _curve(centerline, volume)), {}

    def label_map(cta):
        volume, label, centerline = cta
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
        m = vtk.vtkMatrix4x4()
        _volume_node(volume).GetIJKToRASMatrix(m)
        node.SetIJKToRASMatrix(m)
        slicer.util.updateVolumeFromArray(node, label[K0:K1].astype(np.uint8))
        return (node, _curve(centerline, volume)), {}

    def vector_volume(cta):
        volume, _, centerline = cta
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
        slicer.util.updateVolumeFromArray(node, np.zeros((K1 - K0, 16, 16, 3), np.uint8))
        return (node, _curve(centerline, volume)), {}

    def with_markups(cls):
        def build(cta):
            volume, _, _centerline = cta
            node = slicer.mrmlScene.AddNewNodeByClass(cls, "m")
            return (_volume_node(volume), node), {}
        return build

    def segmentation_under_transform(cta):
        volume, _, centerline = cta
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "moved")
        seg.SetAndObserveTransformNodeID(_transform((0, 5, 0)).GetID())
        return (_volume_node(volume), _curve(centerline, volume), seg), {}

    def array_case(make, **kwargs):
        def build(cta):
            volume, _, centerline = cta
            return (_volume_node(volume, make(volume.array[K0:K1].astype(np.float32).copy())),
                    _curve(centerline, volume)), kwargs
        return build

    def nan(a):
        a[2:4, 20:30, 20:30] = np.nan
        return a

    def far(cta):
        volume, _, centerline = cta
        return (_volume_node(volume), _curve(centerline, volume, shift=(400.0, 0.0, 0.0))), {}

    def options(**kwargs):
        def build(cta):
            volume, _, centerline = cta
            return (_volume_node(volume), _curve(centerline, volume)), kwargs
        return build

    def blank_slices(cta):
        volume, _, centerline = cta
        a = volume.array[K0:K1].astype(np.float32).copy()
        a[3:8] = 40.0
        node = _volume_node(volume, a)
        src = volume.ras_to_src(centerline.points_ras)
        pts = centerline.points_ras[(src[:, 0] > K0 + 3.5) & (src[:, 0] < K0 + 6.5)]
        curve = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "on blank")
        slicer.util.updateMarkupsControlPointsFromArray(curve, pts)
        return (node, curve), {"intensityPreset": "ct-angio"}

    return [
        ("volume under a transform", under_transform, "harden it first"),
        ("label map as input", label_map, "label map"),
        ("vector volume as input", vector_volume, "several components"),
        ("ROI as centerline", with_markups("vtkMRMLMarkupsROINode"), "curve or point list"),
        ("empty curve", with_markups("vtkMRMLMarkupsCurveNode"), "at least 2 points"),
        ("empty point list", with_markups("vtkMRMLMarkupsFiducialNode"), "is empty"),
        ("output segmentation under a transform", segmentation_under_transform, "under a transform"),
        ("NaN voxels", array_case(nan), "NaN/infinite voxels"),
        ("constant volume", array_case(lambda a: np.zeros_like(a)), "one intensity"),
        ("no contrast in the window", array_case(lambda a: a / 100 + 2000, intensityPreset="ct-angio"),
         "grey levels"),
        ("centerline beside the volume", far, "same space"),
        ("tau out of range", options(tau=1.5), "tau must lie"),
        ("context out of range", options(context=40), "context"),
        ("no segment name", options(segmentName="  "), "name"),
        ("unknown method", options(method="magic"), "method must be one of"),
        ("points only on slices without an image", blank_slices, "found the structure at none"),
    ]


CASES = _case_table()


@pytest.mark.parametrize("name,build,message", CASES, ids=[c[0] for c in CASES])
def test_a_refused_input_leaves_the_scene_exactly_as_it_was(name, build, message, cta, logic):
    args, kwargs = build(cta)
    kwargs.setdefault("intensityPreset", "ct-angio")
    kwargs.setdefault("device", "cpu")
    before = scene_state()
    with pytest.raises(SPDInputError, match=message):
        logic.process(*args, **kwargs)
    assert scene_state() == before


def test_a_prior_for_another_checkpoint_is_refused_and_changes_nothing(cta, logic, tmp_path):
    import json

    import torch

    from SPDSegmentLib.method.saliency import PRIOR_FORMAT, PriorFileError, build_saliency_head

    path = tmp_path / "foreign.pt"
    torch.save({"format": PRIOR_FORMAT, "format_version": 1, "state_dict": build_saliency_head().state_dict(),
                "metadata": json.dumps({"checkpoint_sha256": "0" * 64, "backend": "another-sam"})}, path)
    volume, _, centerline = cta
    node, curve = _volume_node(volume), _curve(centerline, volume)
    before = scene_state()
    with pytest.raises(PriorFileError, match="another-sam"):
        logic.process(node, curve, None, "x", prior=str(path), device="cpu")
    assert scene_state() == before


def test_nan_voxels_are_segmented_when_asked_to_mask_them(cta, logic):
    volume, _label, centerline = cta
    a = volume.array[K0:K1].astype(np.float32).copy()
    a[2:4, 20:30, 20:30] = np.nan
    out = logic.process(_volume_node(volume, a), _curve(centerline, volume), None, "aorta", intensityPreset="ct-angio",
                        device="cpu", maskNonFinite=True)
    assert any("NaN" in w for w in out.warnings)


def test_cancel_mid_run_changes_nothing(cta, logic):
    volume, _, centerline = cta
    node, curve = _volume_node(volume), _curve(centerline, volume)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    seg.GetSegmentation().AddEmptySegment("", "keep me")
    before = scene_state()
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(Cancelled):
        logic.process(node, curve, seg, "aorta", intensityPreset="ct-angio", device="cpu", cancel=cancel)
    assert scene_state() == before and calls["n"] > 5


def test_a_curve_under_a_transform_gives_the_result_of_the_hardened_curve(cta, logic):
    volume, _label, centerline = cta
    node = _volume_node(volume)
    plain = _curve(centerline, volume)
    moved = _curve(centerline, volume, shift=(-7.0, 3.0, 0.0))
    moved.SetAndObserveTransformNodeID(_transform((7.0, -3.0, 0.0)).GetID())  # puts it back in place
    a = logic.process(node, plain, None, "a", intensityPreset="ct-angio", device="cpu", showPrompts=False)
    b = logic.process(node, moved, None, "b", intensityPreset="ct-angio", device="cpu", showPrompts=False)
    mask = lambda out: slicer.util.arrayFromSegmentBinaryLabelmap(out.segmentationNode, out.segmentId, node)
    assert np.array_equal(mask(a), mask(b))


def test_an_output_segmentation_on_another_grid_keeps_its_segments_and_gets_the_new_one_right(cta, logic):
    volume, label, centerline = cta
    node = _volume_node(volume)
    other = slicer.util.addVolumeFromArray(np.zeros((5, 40, 40), np.int16), np.diag([2.0, 2.0, 4.0, 1.0]), "coarse")
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "coarse grid")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(other)
    kept = seg.GetSegmentation().AddEmptySegment("", "existing")
    edit = np.zeros((5, 40, 40), np.uint8)
    edit[1:3, 5:20, 5:20] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edit, seg, kept, other)
    before = slicer.util.arrayFromSegmentBinaryLabelmap(seg, kept, other).copy()
    out = logic.process(node, _curve(centerline, volume), seg, "aorta", intensityPreset="ct-angio", device="cpu")
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, kept, other), before)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, out.segmentId, node)
    assert mask.shape == label[K0:K1].shape and dice(mask, label[K0:K1]) > 0.6
