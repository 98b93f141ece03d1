"""MRML nodes <-> the SPDSegment engine: the one layer that both the 3D Slicer module and the browser
app stand on. No Qt, no widgets.

It runs inside 3D Slicer and in plain Python on the ``slicer-core`` wheel (same code as in Slicer's
Python console). Heavy dependencies (torch, segment-anything) are imported only when ``process``
runs, never at import. Every node it creates goes into ``scene`` (default: ``slicer.mrmlScene``), so
the browser app can give each session a scene of its own.

Example (Slicer's Python console; in plain Python boot slicer-core first, see ``mrml_headless``)::

    from SPDSegmentLib.frontends.mrml_logic import SPDSegmentMRMLLogic
    out = SPDSegmentMRMLLogic().process(getNode("CTA"), getNode("AortaCurve"), None, "aorta")
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk

log = logging.getLogger(__name__)

PROMPT_COLORS = {"kept": (0.2, 0.85, 0.2), "rejected": (0.95, 0.2, 0.2), "borrowed": (0.2, 0.8, 1.0),
                 "fallback": (1.0, 0.85, 0.0), "propagated": (0.75, 0.45, 1.0)}


class SPDInputError(ValueError):
    """The nodes or parameters given to the logic cannot be used; the message says why and what to do."""


@dataclass
class ProcessOutput:
    segmentationNode: object
    segmentId: str
    saliencyNode: object | None
    promptNodes: dict
    summary: dict
    warnings: list[str] = field(default_factory=list)


def style_markups(node, color: tuple[float, float, float]) -> None:
    """Give a markups node its display node, in one colour (selected or not), without labels."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetPointLabelsVisibility(False)


def _matrix(vtk_matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


class SPDSegmentMRMLLogic:
    """Batch API over MRML. ``backend_loader`` / ``prior_loader`` are injectable (defaults: the
    engine's own); loaded models are kept between runs, so a second run reuses embeddings."""

    def __init__(self, scene=None, backend_loader: Callable | None = None, prior_loader: Callable | None = None,
                 cache_dir: str | None = None) -> None:
        self._scene = scene
        self._backend_loader = backend_loader
        self._prior_loader = prior_loader
        self._backends: dict = {}
        self.cache_dir = cache_dir

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # --- MRML -> engine ---------------------------------------------------------------------------
    @staticmethod
    def volumeFromNode(volumeNode):
        """Engine Volume from a scalar volume node; parent transforms must be hardened first."""
        from SPDSegmentLib.volume import Volume

        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise SPDInputError("select a scalar volume (CT or MRI) as input")
        if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise SPDInputError(f"'{volumeNode.GetName()}' is a label map; select the image (CT or MRI) itself")
        if volumeNode.GetImageData() is None:
            raise SPDInputError(f"volume '{volumeNode.GetName()}' has no image data")
        if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
            raise SPDInputError(f"volume '{volumeNode.GetName()}' has several components (colour?); "
                                "select a single-component CT or MRI")
        if volumeNode.GetParentTransformNode() is not None:
            raise SPDInputError(f"volume '{volumeNode.GetName()}' is under a transform: harden it first "
                                "(Data module, right-click the transform, 'Harden transform')")
        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        try:
            return Volume(slicer.util.arrayFromVolume(volumeNode).copy(), _matrix(m), volumeNode.GetName())
        except ValueError as exc:
            raise SPDInputError(str(exc)) from exc

    @staticmethod
    def centerlineFromNode(markupsNode):
        """Engine Centerline (world RAS, so markup transforms are applied) from a curve or point list."""
        from SPDSegmentLib.method.prompts import Centerline

        if markupsNode is None:
            raise SPDInputError("select a centerline: a markups curve or point list")
        if markupsNode.IsA("vtkMRMLMarkupsCurveNode"):
            if markupsNode.GetNumberOfDefinedControlPoints() < 2:
                raise SPDInputError(f"curve '{markupsNode.GetName()}' needs at least 2 points")
            points, ordered = slicer.util.arrayFromMarkupsCurvePoints(markupsNode, world=True), True
        elif markupsNode.IsA("vtkMRMLMarkupsFiducialNode"):
            if markupsNode.GetNumberOfDefinedControlPoints() < 1:
                raise SPDInputError(f"point list '{markupsNode.GetName()}' is empty")
            points = np.array([markupsNode.GetNthControlPointPositionWorld(i)
                               for i in range(markupsNode.GetNumberOfControlPoints())
                               if markupsNode.GetNthControlPointPositionStatus(i)
                               == markupsNode.PositionDefined])
            ordered = False
        else:
            raise SPDInputError(f"'{markupsNode.GetName()}' is a {markupsNode.GetClassName()}; "
                                "use a markups curve or point list as centerline")
        try:
            return Centerline(np.asarray(points, dtype=float), ordered, markupsNode.GetName())
        except ValueError as exc:
            raise SPDInputError(str(exc)) from exc

    # --- engine ---------------------------------------------------------------------------------
    def backend(self, name: str = "litemedsam", checkpoint: str | None = None, device: str = "auto",
                decoder: str | None = None, runtime: str = "auto"):
        """The SAM backend, loaded once and kept (its embedding cache with it)."""
        key = (name, checkpoint or "", device, decoder or "", runtime)
        if key not in self._backends:
            from SPDSegmentLib.sam.backend import load_backend
            from SPDSegmentLib.sam.embedding_cache import EmbeddingCache

            cache = EmbeddingCache(folder=self.cache_dir) if self.cache_dir else None
            if self._backend_loader is not None:
                backend = self._backend_loader(name, checkpoint or None, device, cache)
            else:
                backend = load_backend(name, checkpoint or None, device, cache, runtime=runtime)
            if decoder:
                from SPDSegmentLib.training.decoder import load_decoder

                load_decoder(backend, decoder)
            self._backends = {key: backend}
        return self._backends[key]

    def clearCache(self) -> int:
        """Drop loaded models and cached embeddings (memory and the cache folder)."""
        removed = sum(b.cache.clear() for b in self._backends.values())
        self._backends = {}
        return removed

    def checkOutputNode(self, segmentationNode) -> None:
        if segmentationNode is None:
            return
        if not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise SPDInputError("the output must be a segmentation node")
        if segmentationNode.GetParentTransformNode() is not None:
            raise SPDInputError(f"segmentation '{segmentationNode.GetName()}' is under a transform; "
                                "harden it or choose another output")

    def validateInputs(self, volumeNode, centerlineNode, segmentationNode=None, segmentName: str = "SPD",
                       method: str = "spd", tau: float | None = None, context: int = 2,
                       intensityPreset: str = "auto", maskNonFinite: bool = False,
                       thickContext: int | None = None):
        """Every check that needs no model (numpy and scipy only), so a front end can refuse bad
        inputs before offering to install or load anything. Returns the engine inputs."""
        from SPDSegmentLib.method.checks import InputRefused, preflight
        from SPDSegmentLib.method.pipeline import SegmentParams

        volume = self.volumeFromNode(volumeNode)
        centerline = self.centerlineFromNode(centerlineNode)
        self.checkOutputNode(segmentationNode)
        if not segmentName or not segmentName.strip():
            raise SPDInputError("give the new segment a name")
        params = SegmentParams(method=method, tau=tau, context=context, thick_context=thickContext or None,
                               intensity_preset=intensityPreset)
        try:
            params.validate()
            return volume, centerline, preflight(volume, centerline, params, mask_nonfinite=maskNonFinite)
        except (InputRefused, ValueError) as exc:
            raise SPDInputError(str(exc)) from exc

    def process(self, volumeNode, centerlineNode, segmentationNode=None, segmentName: str = "SPD",
                method: str = "spd", backend: str = "litemedsam", checkpoint: str | None = None,
                decoder: str | None = None, prior: str | None = None, tau: float | None = None,
                context: int = 2, thickContext: int | None = None, consistency: bool = False,
                fallback: str = "empty", propagate: bool = True, limitLeaks: bool = True,
                intensityPreset: str = "auto", device: str = "auto", runtime: str = "auto",
                showSaliency: bool = False, showPrompts: bool = True, maskNonFinite: bool = False,
                force: bool = False, progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None, replace: ProcessOutput | None = None) -> ProcessOutput:
        """Segment along ``centerlineNode`` in ``volumeNode`` into a new segment of ``segmentationNode``
        (created when None). Existing segments are never modified; ``replace`` (the output of an
        earlier run, e.g. when "update on edit" re-runs after a point moved) updates that run's own
        segment and prompt lists instead of adding new ones. Inputs are checked before any model is
        loaded, and the scene changes only after the engine has finished, so a refused, cancelled or
        failed run leaves the scene exactly as it was. A re-run reuses every embedding and every
        decoded mask whose slice and prompt did not change, so it costs only the edited slices.
        ``thickContext`` (0 or None: off) lets CPD borrow from that many slices per side where the
        structure is thick (``SegmentParams.thick_context``: solid organs)."""
        from SPDSegmentLib.method.checks import InputRefused, preflight
        from SPDSegmentLib.method.pipeline import NothingToSegment, SegmentParams, segment
        from SPDSegmentLib.method.saliency import load_prior

        volume = self.volumeFromNode(volumeNode)
        centerline = self.centerlineFromNode(centerlineNode)
        self.checkOutputNode(segmentationNode)
        if not segmentName or not segmentName.strip():
            raise SPDInputError("give the new segment a name")
        params = SegmentParams(method=method, tau=tau, context=context, thick_context=thickContext or None,
                               consistency=consistency, fallback=fallback, propagate=propagate,
                               intensity_preset=intensityPreset,
                               **({} if limitLeaks else {"leak_limit": None}))
        try:
            params.validate()
            checked = preflight(volume, centerline, params, mask_nonfinite=maskNonFinite)
        except (InputRefused, ValueError) as exc:
            raise SPDInputError(str(exc)) from exc
        engine_backend = self.backend(backend, checkpoint, device, decoder, runtime)
        engine_prior = (self._prior_loader or load_prior)(prior, engine_backend)
        try:
            result = segment(checked.volume, centerline, engine_backend, engine_prior, params, progress, cancel,
                             checked=checked)
        except NothingToSegment as exc:
            if not force:
                raise SPDInputError(str(exc)) from exc
            result = exc.result
        if replace is not None and self._ownSegment(replace):
            return self._updateResults(result, volumeNode, replace, showPrompts)
        return self._writeResults(result, volumeNode, segmentationNode, segmentName.strip(),
                                  showSaliency, showPrompts)

    # --- engine -> MRML -------------------------------------------------------------------------
    def _writeResults(self, result, volumeNode, segmentationNode, segmentName, showSaliency, showPrompts):
        scene = self.scene
        created = segmentationNode is None
        if created:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volumeNode.GetName()} SPD")
            segmentationNode.CreateDefaultDisplayNodes()
        segmentation = segmentationNode.GetSegmentation()
        if created or segmentation.GetNumberOfSegments() == 0:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        name, n = segmentName, 2
        while segmentation.GetSegmentIdBySegmentName(name):
            name, n = f"{segmentName} {n}", n + 1
        segmentId = segmentation.AddEmptySegment("", name)
        if not segmentId:
            raise RuntimeError("could not add a segment (segmentation converters not registered?)")
        self._setSegmentArray(result.mask, segmentationNode, segmentId, volumeNode)
        segment = segmentation.GetSegment(segmentId)
        segment.SetTag("SPDSegment.parameters", str(result.summary()["params"]))
        saliencyNode = None
        if showSaliency:
            saliencyNode = self._addSaliencyNode(result, volumeNode, f"{name} saliency")
        promptNodes = self._addPromptNodes(result, name) if showPrompts else {}
        summary = result.summary()
        return ProcessOutput(segmentationNode, segmentId, saliencyNode, promptNodes, summary,
                             list(summary.get("warnings", [])))

    def _ownSegment(self, output: ProcessOutput) -> bool:
        """True when ``output``'s segment still exists and was made by SPDSegment (never touch others)."""
        node = output.segmentationNode
        if node is None or self.scene.GetNodeByID(node.GetID()) is not node:
            return False
        segment = node.GetSegmentation().GetSegment(output.segmentId)
        return segment is not None and bool(segment.HasTag("SPDSegment.parameters"))

    def _setSegmentArray(self, array, segmentationNode, segmentId, volumeNode) -> None:
        """Write a ``[k, j, i]`` mask into a segment through a temporary labelmap in *this* scene
        (``slicer.util.updateSegmentBinaryLabelmapFromArray`` uses the global scene and leaves the
        temporary labelmap's display node behind, one per call), then remove it with its helpers."""
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__SPDSegment_temporary__")
        try:
            m = vtk.vtkMatrix4x4()
            volumeNode.GetIJKToRASMatrix(m)
            labelmap.SetIJKToRASMatrix(m)
            slicer.util.updateVolumeFromArray(labelmap, (np.asarray(array) > 0).astype(np.uint8))
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode,
                                                                                             ids):
                raise RuntimeError(f"could not write segment {segmentId!r} (segmentation converters not registered?)")
        finally:
            self._removeWithDisplays(labelmap)

    def _removeWithDisplays(self, node) -> None:
        """Remove a node and the display and storage nodes that only it uses (MRML leaves them)."""
        helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        self.scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and self.scene.GetNodeByID(helper.GetID()) is helper:
                self.scene.RemoveNode(helper)

    def _updateResults(self, result, volumeNode, previous: ProcessOutput, showPrompts: bool) -> ProcessOutput:
        node, segmentId = previous.segmentationNode, previous.segmentId
        self._setSegmentArray(result.mask, node, segmentId, volumeNode)
        node.GetSegmentation().GetSegment(segmentId).SetTag("SPDSegment.parameters", str(result.summary()["params"]))
        for old in previous.promptNodes.values():
            if self.scene.GetNodeByID(old.GetID()) is old:
                self._removeWithDisplays(old)
        name = node.GetSegmentation().GetSegment(segmentId).GetName()
        promptNodes = self._addPromptNodes(result, name) if showPrompts else {}
        if previous.saliencyNode is not None and self.scene.GetNodeByID(previous.saliencyNode.GetID()):
            slicer.util.updateVolumeFromArray(previous.saliencyNode, result.saliency)
        summary = result.summary()
        return ProcessOutput(node, segmentId, previous.saliencyNode, promptNodes, summary,
                             list(summary.get("warnings", [])))

    def _addSaliencyNode(self, result, volumeNode, name: str):
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        node.SetIJKToRASMatrix(m)
        slicer.util.updateVolumeFromArray(node, result.saliency)
        node.CreateDefaultDisplayNodes()
        return node

    def _addPromptNodes(self, result, name: str) -> dict:
        """One point list per CPD status (kept / rejected / borrowed / ...), coloured and locked."""
        rows = result.audit_rows()
        nodes = {}
        for status, color in PROMPT_COLORS.items():
            pts = [r for r in rows if r["status"] == status]
            if not pts:
                continue
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"SPD prompts {name} ({status})")
            slicer.util.updateMarkupsControlPointsFromArray(node, np.array([[r["r"], r["a"], r["s"]] for r in pts]))
            for i, r in enumerate(pts):
                node.SetNthControlPointLabel(i, status if status != "borrowed" else f"borrowed<-{r['source_slice']}")
                node.SetNthControlPointDescription(i, f"slice {r['slice']}, saliency {r['saliency']:.2f}")
            node.SetLocked(True)
            style_markups(node, color)
            nodes[status] = node
        return nodes
