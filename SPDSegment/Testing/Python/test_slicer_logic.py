"""The Logic on real MRML (slicer-core), the real engine and the real LiteMedSAM."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk

import SPDSegment
from SPDSegmentLib.evaluation import sample_data  # noqa: F401  (fixtures read the fetched CTA)
from SPDSegmentLib.evaluation.metrics import dice
from SPDSegmentLib.frontends.mrml_logic import SPDInputError, SPDSegmentMRMLLogic
from SPDSegmentLib.io import read_markups, read_segmentation, read_volume, write_centerline
from SPDSegmentLib.method.prompts import Centerline

K0, K1 = 40, 50
MODULE_DIR = Path(SPDSegment.__file__).resolve().parent
REPO = MODULE_DIR.parent


@pytest.fixture(scope="module")
def logic():
    return SPDSegment.SPDSegmentLogic()


def _slab_node(volume, flip=False):
    arr = volume.array[K0:K1].copy()
    m = volume.ijk_to_ras.copy()
    m[:3, 3] = volume.ijk_to_ras_points([[0, 0, K0]])[0]
    if flip:  # reverse k and i: same physical voxels, flipped index order
        nk, ni = arr.shape[0], arr.shape[2]
        m[:3, 3] = (np.c_[m[:3, :3], m[:3, 3]] @ [ni - 1, 0, nk - 1, 1])
        m[:3, 0] *= -1
        m[:3, 2] *= -1
        arr = arr[::-1, :, ::-1].copy()
    return slicer.util.addVolumeFromArray(arr, m, "CTA slab")


def _curve_node(centerline, volume, cls="vtkMRMLMarkupsCurveNode", step=3):
    src = volume.ras_to_src(centerline.points_ras)
    pts = centerline.points_ras[(src[:, 0] > K0 - 1) & (src[:, 0] < K1)][::step]
    node = slicer.mrmlScene.AddNewNodeByClass(cls, "centerline")
    slicer.util.updateMarkupsControlPointsFromArray(node, pts)
    return node


def _mask(out, volumeNode):
    return slicer.util.arrayFromSegmentBinaryLabelmap(out.segmentationNode, out.segmentId, volumeNode)


def test_curve_input_gives_a_segment_on_the_volume_geometry(cta_case, logic):
    volume, label, centerline = cta_case
    volumeNode = _slab_node(volume)
    out = logic.process(volumeNode, _curve_node(centerline, volume), None, "aorta", intensityPreset="ct-angio")
    mask = _mask(out, volumeNode)
    assert mask.shape == volumeNode.GetImageData().GetDimensions()[::-1]
    assert dice(mask, label[K0:K1]) > 0.8
    ref = out.segmentationNode.GetSegmentation().GetConversionParameter("Reference image geometry")
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    values = [float(v) for v in ref.split(";")[:16]]
    np.testing.assert_allclose(values, [m.GetElement(r, c) for r in range(4) for c in range(4)], atol=1e-6)
    assert {"kept"} <= set(out.promptNodes)
    assert out.summary["warnings"] == [], "the training-free prior fits this scan: no warning"


def test_point_list_input_works(cta_case, logic):
    volume, label, centerline = cta_case
    volumeNode = _slab_node(volume)
    points = _curve_node(centerline, volume, "vtkMRMLMarkupsFiducialNode", step=1)
    out = logic.process(volumeNode, points, None, "aorta", intensityPreset="ct-angio", showSaliency=True)
    assert dice(_mask(out, volumeNode), label[K0:K1]) > 0.8
    sal = slicer.util.arrayFromVolume(out.saliencyNode)
    assert sal.shape == label[K0:K1].shape and sal.max() <= 1.0


def test_flipped_volume_gives_the_same_physical_result(cta_case, logic):
    volume, label, centerline = cta_case
    plain, flipped = _slab_node(volume), _slab_node(volume, flip=True)
    curve = _curve_node(centerline, volume)
    a = _mask(logic.process(plain, curve, None, "a", intensityPreset="ct-angio", showPrompts=False), plain)
    b = _mask(logic.process(flipped, curve, None, "b", intensityPreset="ct-angio", showPrompts=False), flipped)
    assert np.array_equal(a, b[::-1, :, ::-1]), "SAM sees the same anatomical images, so the result is identical"
    assert dice(b[::-1, :, ::-1], label[K0:K1]) > 0.8


def test_existing_segments_are_untouched_and_names_never_collide(cta_case, logic):
    volume, _, centerline = cta_case
    volumeNode = _slab_node(volume)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    mine = seg.GetSegmentation().AddEmptySegment("", "aorta")
    edit = np.zeros(volume.array[K0:K1].shape, np.uint8)
    edit[2:5, 10:30, 10:30] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edit, seg, mine, volumeNode)
    before = slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, volumeNode).copy()
    out = logic.process(volumeNode, _curve_node(centerline, volume), seg, "aorta", intensityPreset="ct-angio")
    assert out.segmentationNode is seg and out.segmentId != mine
    assert seg.GetSegmentation().GetSegment(out.segmentId).GetName() == "aorta 2"
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, volumeNode), before)


def test_bad_inputs_are_refused_and_change_nothing(cta_case, logic):
    volume, _, centerline = cta_case
    volumeNode = _slab_node(volume)
    curve = _curve_node(centerline, volume)
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volumeNode.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(SPDInputError, match="harden"):
        logic.process(volumeNode, curve, None, "x")
    volumeNode.SetAndObserveTransformNodeID(None)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    with pytest.raises(SPDInputError, match="curve or point list"):
        logic.process(volumeNode, roi, None, "x")
    with pytest.raises(SPDInputError, match="tau"):
        logic.process(volumeNode, curve, None, "x", tau=2.0)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode")
    with pytest.raises(SPDInputError, match="at least 2"):
        logic.process(volumeNode, empty, None, "x")
    count = lambda cls: slicer.mrmlScene.GetNodesByClass(cls).GetNumberOfItems()
    assert count("vtkMRMLSegmentationNode") == 0 and count("vtkMRMLMarkupsFiducialNode") == 0
    assert count("vtkMRMLScalarVolumeNode") == 1 and nodes_before < slicer.mrmlScene.GetNumberOfNodes()


def _save(node, path):
    storage = node.CreateDefaultStorageNode()
    slicer.mrmlScene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.WriteData(node)


def test_seg_nrrd_and_mrk_json_round_trip_between_slicer_and_the_engine(cta_case, logic, tmp_path):
    volume, _label, centerline = cta_case
    volumeNode = _slab_node(volume)
    out = logic.process(volumeNode, _curve_node(centerline, volume), None, "aorta", intensityPreset="ct-angio")
    mask = _mask(out, volumeNode)
    # Slicer writes .seg.nrrd -> the engine reads it
    _save(out.segmentationNode, tmp_path / "slicer.seg.nrrd")
    engine_seg = read_segmentation(tmp_path / "slicer.seg.nrrd", reference=read_volume_from_node(volumeNode, tmp_path))
    np.testing.assert_array_equal(engine_seg["aorta"].array, mask)
    # the engine writes .seg.nrrd -> Slicer reads it with the right geometry
    from SPDSegmentLib.io import write_segmentation

    slab = read_volume_from_node(volumeNode, tmp_path)
    write_segmentation(slab, {"engine": mask}, tmp_path / "engine.seg.nrrd")
    loaded = slicer.modules.segmentations.logic().LoadSegmentationFromFile(str(tmp_path / "engine.seg.nrrd"), False)
    sid = loaded.GetSegmentation().GetSegmentIdBySegmentName("engine")
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(loaded, sid, volumeNode), mask)
    # Slicer writes the prompts .mrk.json -> the engine reads the same RAS points
    kept = out.promptNodes["kept"]
    _save(kept, tmp_path / "kept.mrk.json")
    np.testing.assert_allclose(read_markups(tmp_path / "kept.mrk.json").points_ras,
                               slicer.util.arrayFromMarkupsControlPoints(kept), atol=1e-6)
    # the engine writes a curve .mrk.json -> Slicer loads it as a curve with the same points
    pts = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])
    write_centerline(Centerline(pts, True, "c"), tmp_path / "c.mrk.json")
    node_id = slicer.modules.markups.logic().LoadMarkups(str(tmp_path / "c.mrk.json"))
    node = slicer.mrmlScene.GetNodeByID(node_id)
    assert node.IsA("vtkMRMLMarkupsCurveNode")
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(node), pts, atol=1e-6)


def read_volume_from_node(volumeNode, folder):
    _save(volumeNode, folder / "slab.nrrd")
    return read_volume(folder / "slab.nrrd")


def test_cmake_lists_every_engine_file_and_metadata_agrees():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "SPDSegment")
    listed = {line.strip() for line in cmake.splitlines() if line.strip().startswith("SPDSegmentLib/")}
    on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / "SPDSegmentLib").rglob("*")
               if p.suffix in (".py", ".pt", ".json", ".html", ".css", ".js") and "__pycache__" not in p.parts}
    assert listed == on_disk, f"CMakeLists differs from the package: missing {sorted(on_disk - listed)}, " \
                              f"extra {sorted(listed - on_disk)}"
    for res in ("Resources/Icons/SPDSegment.png", "Resources/UI/SPDSegment.ui", "Resources/requirements.txt"):
        assert res in cmake and (MODULE_DIR / res).exists()
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest(SCRIPT SPDSegment.py)" in cmake
    assert "../SPDSegmentLib" not in cmake, "paths outside the module folder are copied beside qt-scripted-modules"
    top = (REPO / "CMakeLists.txt").read_text()
    s4ext = dict(line.split(" ", 1) for line in (REPO / "SPDSegment.s4ext").read_text().splitlines()
                 if line and not line.startswith("#"))
    for key, field in (("homepage", "EXTENSION_HOMEPAGE"), ("category", "EXTENSION_CATEGORY"),
                       ("depends", "EXTENSION_DEPENDS"), ("iconurl", "EXTENSION_ICONURL"),
                       ("screenshoturls", "EXTENSION_SCREENSHOTURLS")):
        assert f'set({field} "{s4ext[key]}")' in top
    for url in (s4ext["iconurl"], *s4ext["screenshoturls"].split()):
        assert (REPO / url.split("/main/", 1)[1]).is_file(), f"{url} points to no file in the repository"
    index = json.loads((REPO / "SPDSegment.json").read_text())
    assert index["build_dependencies"] == s4ext["depends"].split() and index["category"] == s4ext["category"]
    assert (REPO / "LICENSE.txt").exists()


def test_parameter_node_choices_match_the_engine():
    """The module file may not import the engine at file scope, so its Choice lists are literals:
    they must list exactly what the engine accepts."""

    from SPDSegmentLib.method.cpd import MODES
    from SPDSegmentLib.method.windowing import PRESETS
    from SPDSegmentLib.sam.backend import BACKENDS

    tree = ast.parse((MODULE_DIR / "SPDSegment.py").read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "SPDSegmentParameterNode")
    choices = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign):
            for call in ast.walk(stmt.annotation):
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Choice":
                    choices[stmt.target.id] = ast.literal_eval(call.args[0])
    assert set(choices["backend"]) == set(BACKENDS)
    assert set(choices["method"]) == set(MODES)
    assert set(choices["intensityPreset"]) == set(PRESETS)
    assert set(choices["device"]) == {"auto", "cpu", "cuda"}


def test_a_prior_that_does_not_fit_the_scan_is_reported_in_the_summary(cta_case, logic):
    """The shipped abdominal aorta prior on the chest CTA: it rejects nearly every point; the user
    must be told (the widget shows summary warnings), not silently handed an empty segment."""
    volume, _label, centerline = cta_case
    volumeNode = _slab_node(volume)
    out = logic.process(volumeNode, _curve_node(centerline, volume), None, "aorta", intensityPreset="ct-angio",
                        prior="trained-aorta")
    assert out.summary["counts"]["rejected"] > 4 * out.summary["counts"]["kept"]
    assert len(out.summary["warnings"]) == 1 and "sam-track" in out.summary["warnings"][0]


@pytest.mark.parametrize("kind", ["Curve", "ClosedCurve"])
def test_a_curve_file_is_read_as_the_curve_slicer_draws_and_prompts_as_the_module_does(cta_case, tmp_path, kind):
    """A .mrk.json curve read by the engine (command line, evaluate --cases, batch) runs through the
    same points as the curve Slicer draws from that file (a cardinal spline, sampled 10 times per
    segment), and so gives the same slice prompts as the module, which reads the scene's curve
    points. Sparse control points around bends, as a radiologist clicks them: joined by straight
    lines, the engine's curve left Slicer's by millimetres and prompted other points."""
    from SPDSegmentLib.io import markups_document, write_markups
    from SPDSegmentLib.method.prompts import slice_prompts

    volume, _label, centerline = cta_case
    slab = read_volume_from_node(_slab_node(volume), tmp_path)
    rng = np.random.default_rng(7)
    for n in (2, 3, 4, 7):
        # control points every few slices along the real aorta, moved a few mm sideways
        picks = np.linspace(0, len(centerline.points_ras) - 1, n).round().astype(int)
        control = centerline.points_ras[picks] + rng.normal(0, 3.0, (n, 3)) * [1, 1, 0]
        path = write_markups(tmp_path / f"{kind}{n}.mrk.json", markups_document(kind, f"c{n}", control))
        node = slicer.mrmlScene.GetNodeByID(slicer.modules.markups.logic().LoadMarkups(str(path)))
        assert node.IsA(f"vtkMRMLMarkups{kind}Node")
        from_file = read_markups(path)
        drawn = slicer.util.arrayFromMarkupsCurvePoints(node, world=True)
        assert from_file.path_ras().shape == drawn.shape
        np.testing.assert_allclose(from_file.path_ras(), drawn, atol=1e-3)  # Slicer stores float32
        np.testing.assert_allclose(from_file.points_ras, control, atol=1e-6)  # the control points, as read
        engine = slice_prompts(from_file, slab)
        module = slice_prompts(SPDSegmentMRMLLogic.centerlineFromNode(node), slab)
        assert engine.keys() == module.keys() and engine, f"{kind} of {n}: the same slices are prompted"
        for t in engine:
            a = np.array([[p.row, p.col] for p in engine[t]])
            b = np.array([[p.row, p.col] for p in module[t]])
            np.testing.assert_allclose(a, b, atol=1e-3)
    chord = slice_prompts(Centerline(control, True, "polyline"), slab)  # the premise: straight lines prompt elsewhere
    moved = [t for t in engine if t in chord and not np.allclose(
        [engine[t][0].row, engine[t][0].col], [chord[t][0].row, chord[t][0].col], atol=0.5)]
    assert moved, "a sparse curve's spline and its chords differ by more than half a pixel somewhere"
