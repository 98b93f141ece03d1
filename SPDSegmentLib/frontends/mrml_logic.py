"""SPDSegment's Logic: MRML nodes <-> the SPDSegmentLib engine. No Qt, no widgets.

Works inside Slicer and in plain Python with the ``slicer-core`` wheel (same code as the Slicer
Python console). Heavy dependencies (torch, segment-anything) are imported only when ``process``
runs, never at import.

Example (Slicer Python console, or plain Python after booting slicer-core)::

    from SPDSegmentLogic import SPDSegmentLogic
    logic = SPDSegmentLogic()
    seg = logic.process(getNode("CTA"), getNode("AortaCurve"), None, "aorta", tau=0.5, context=2)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import slicer
import vtk

log = logging.getLogger(__name__)

PROMPT_COLORS = {"kept": (0.2, 0.85, 0.2), "rejected": (0.95, 0.2, 0.2), "borrowed": (0.2, 0.8, 1.0),
                 "fallback": (1.0, 0.85, 0.0)}


class SPDInputError(ValueError):
    """The nodes or parameters given to the Logic cannot be used; the message says why and what to do."""


@dataclass
class ProcessOutput:
    segmentationNode: object
    segmentId: str
    saliencyNode: object | None
    promptNodes: dict
    summary: dict


def _matrix(vtk_matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


class SPDSegmentLogic:
    """Batch API. ``backend_loader`` / ``prior_loader`` are injectable (defaults: the engine's own),
    and loaded models are kept between runs so a second run reuses embeddings."""

    def __init__(self, backend_loader: Callable | None = None, prior_loader: Callable | None = None,
                 cache_dir: str | None = None) -> None:
        self._backend_loader = backend_loader
        self._prior_loader = prior_loader
        self._backends: dict = {}
        self.cache_dir = cache_dir

    # --- MRML -> engine ---------------------------------------------------------------------------
    @staticmethod
    def volumeFromNode(volumeNode):
        """Engine Volume from a scalar volume node; parent transforms must be hardened first."""
        from SPDSegmentLib.volume import Volume

        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise SPDInputError("select a scalar volume (CT or MRI) as input")
        if volumeNode.GetImageData() is None:
            raise SPDInputError(f"volume '{volumeNode.GetName()}' has no image data")
        if volumeNode.GetParentTransformNode() is not None:
            raise SPDInputError(f"volume '{volumeNode.GetName()}' is under a transform: harden it first "
                                "(Data module, right-click the transform, 'Harden transform')")
        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        return Volume(slicer.util.arrayFromVolume(volumeNode).copy(), _matrix(m), volumeNode.GetName())

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
            points, ordered = slicer.util.arrayFromMarkupsControlPoints(markupsNode, world=True), False
        else:
            raise SPDInputError(f"'{markupsNode.GetName()}' is a {markupsNode.GetClassName()}; "
                                "use a markups curve or point list as centerline")
        return Centerline(np.asarray(points, dtype=float), ordered, markupsNode.GetName())

    # --- engine ---------------------------------------------------------------------------------
    def backend(self, name: str = "litemedsam", checkpoint: str | None = None, device: str = "auto",
                decoder: str | None = None):
        """The SAM backend, loaded once and kept (its embedding cache with it)."""
        key = (name, checkpoint or "", device, decoder or "")
        if key not in self._backends:
            from SPDSegmentLib.sam.embedding_cache import EmbeddingCache
            from SPDSegmentLib.sam.backend import load_backend

            loader = self._backend_loader or load_backend
            backend = loader(name, checkpoint or None, device,
                             EmbeddingCache(folder=self.cache_dir) if self.cache_dir else None)
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

    def process(self, volumeNode, centerlineNode, segmentationNode=None, segmentName: str = "SPD",
                method: str = "spd", backend: str = "litemedsam", checkpoint: str | None = None,
                decoder: str | None = None, prior: str = "sam-votes", tau: float | None = None, context: int = 2, consistency: bool = False,
                fallback: str = "empty", intensityPreset: str = "auto", device: str = "auto",
                showSaliency: bool = False, showPrompts: bool = True,
                progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> ProcessOutput:
        """Segment along ``centerlineNode`` in ``volumeNode`` into a new segment of ``segmentationNode``
        (created when None). Existing segments are never modified; the scene changes only after
        the engine finished, in one undoable step, so a cancelled or failed run changes nothing."""
        from SPDSegmentLib.method.pipeline import SegmentParams, segment
        from SPDSegmentLib.method.saliency import load_prior

        volume = self.volumeFromNode(volumeNode)
        centerline = self.centerlineFromNode(centerlineNode)
        if segmentationNode is not None:
            if not segmentationNode.IsA("vtkMRMLSegmentationNode"):
                raise SPDInputError("the output must be a segmentation node")
            if segmentationNode.GetParentTransformNode() is not None:
                raise SPDInputError(f"segmentation '{segmentationNode.GetName()}' is under a transform; "
                                    "harden it or choose another output")
        if not segmentName or not segmentName.strip():
            raise SPDInputError("give the new segment a name")
        params = SegmentParams(method=method, tau=tau, context=context, consistency=consistency,
                               fallback=fallback, intensity_preset=intensityPreset)
        try:
            params.validate()
        except ValueError as exc:
            raise SPDInputError(str(exc)) from exc
        engine_backend = self.backend(backend, checkpoint, device, decoder)
        engine_prior = (self._prior_loader or load_prior)(prior, engine_backend)
        result = segment(volume, centerline, engine_backend, engine_prior, params, progress, cancel)
        return self._writeResults(result, volumeNode, segmentationNode, segmentName.strip(),
                                  showSaliency, showPrompts)

    # --- engine -> MRML -------------------------------------------------------------------------
    def _writeResults(self, result, volumeNode, segmentationNode, segmentName, showSaliency, showPrompts):
        scene = slicer.mrmlScene
        scene.SaveStateForUndo()
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
        slicer.util.updateSegmentBinaryLabelmapFromArray(result.mask, segmentationNode, segmentId, volumeNode)
        segment = segmentation.GetSegment(segmentId)
        segment.SetTag("SPDSegment.parameters", str(result.summary()["params"]))
        saliencyNode = None
        if showSaliency:
            m = vtk.vtkMatrix4x4()
            volumeNode.GetIJKToRASMatrix(m)
            saliencyNode = slicer.util.addVolumeFromArray(result.saliency, _matrix(m),
                                                          f"{name} saliency")
        promptNodes = self._addPromptNodes(result, name) if showPrompts else {}
        return ProcessOutput(segmentationNode, segmentId, saliencyNode, promptNodes, result.summary())

    @staticmethod
    def _addPromptNodes(result, name: str) -> dict:
        """One point list per CPD status (kept / rejected / borrowed / fallback), coloured, locked."""
        rows = result.audit_rows()
        nodes = {}
        for status, color in PROMPT_COLORS.items():
            pts = [r for r in rows if r["status"] == status]
            if not pts:
                continue
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"SPD prompts {name} ({status})")
            slicer.util.updateMarkupsControlPointsFromArray(node, np.array([[r["r"], r["a"], r["s"]] for r in pts]))
            for i, r in enumerate(pts):
                node.SetNthControlPointLabel(i, status if status != "borrowed" else f"borrowed<-{r['source_slice']}")
                node.SetNthControlPointDescription(i, f"slice {r['slice']}, saliency {r['saliency']:.2f}")
            node.SetLocked(True)
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(*color)
                display.SetColor(*color)
                display.SetPointLabelsVisibility(False)
            nodes[status] = node
        return nodes
