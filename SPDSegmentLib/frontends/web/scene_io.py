"""Files <-> one session's MRML scene, through Slicer's own readers and storage nodes.

Volumes (NRRD, NIfTI, MetaImage, a DICOM series) load with trame-slicer's reader; ``.mrk.json``
and ``.seg.nrrd`` go through MRML storage nodes, so what the page saves opens in 3D Slicer as is.
Every function raises :class:`SceneIOError` with a message for the page instead of returning None.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import slicer

from .data_folder import VOLUME_SUFFIXES, is_dicom_file


class SceneIOError(ValueError):
    """A file could not be read or written; the message is shown in the page."""


def volume_files(path: Path) -> list[str]:
    """The files that make up the volume at ``path``: the file itself, or a folder's DICOM files."""
    if path.is_dir():
        files = sorted(str(f) for f in path.iterdir() if f.is_file() and is_dicom_file(f))
        if not files:
            raise SceneIOError(f"'{path.name}' holds no DICOM files (files with 'DICM' at byte 128)")
        return files
    return [str(path)]


def load_volume(slicer_app, files: list[str], label: str):
    """Add the largest scalar volume read from ``files`` to the scene; refuse anything else."""
    from trame_slicer.core import VolumesReader

    single = len(files) == 1 and not is_dicom_file(Path(files[0]))
    if single and not files[0].lower().endswith(VOLUME_SUFFIXES):
        raise SceneIOError(f"'{label}': not a volume file; use NRRD, NIfTI (.nii, .nii.gz), MetaImage (.mha) "
                           "or a folder of DICOM files")
    try:
        nodes = VolumesReader.load_volumes(slicer_app.scene, slicer_app.app_logic, files)
    except Exception as exc:  # readers raise anything, from pydicom to ITK
        raise SceneIOError(f"could not read '{label}': {type(exc).__name__}: {exc}") from exc
    scalars = [n for n in nodes if n is not None and n.IsA("vtkMRMLScalarVolumeNode") and n.GetImageData()]
    for node in nodes:
        if node is not None and node not in scalars:
            slicer_app.scene.RemoveNode(node)
    if not scalars:
        raise SceneIOError(f"could not read '{label}' as an image (unreadable, truncated or not a volume)")

    def voxels(node) -> int:
        d = node.GetImageData().GetDimensions()
        return d[0] * d[1] * d[2]

    scalars.sort(key=voxels)
    for extra in scalars[:-1]:
        slicer_app.scene.RemoveNode(extra)
    node = scalars[-1]
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        slicer_app.scene.RemoveNode(node)
        raise SceneIOError(f"'{label}' is a colour / multi-component image; open a CT or MRI")
    return node


def load_markups(slicer_app, path: Path):
    """A curve or point list from a Slicer ``.mrk.json`` (stored in LPS, read back as RAS)."""
    node_id = slicer_app.markups_logic._logic.LoadMarkups(str(path), path.name.removesuffix(".mrk.json"))
    node = slicer_app.scene.GetNodeByID(node_id) if node_id else None
    if node is None:
        raise SceneIOError(f"could not read '{path.name}' as Slicer markups (.mrk.json)")
    if not (node.IsA("vtkMRMLMarkupsCurveNode") or node.IsA("vtkMRMLMarkupsFiducialNode")):
        kind = node.GetClassName()
        slicer_app.scene.RemoveNode(node)
        raise SceneIOError(f"'{path.name}' holds a {kind}; a centerline is a curve or a point list")
    return node


def _write_with_storage_node(scene, node, path: Path) -> None:
    """Write through the node's storage node into a hidden file, then rename it: a reader (or a
    crash) never sees half a file."""
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.CreateDefaultStorageNode()
        scene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    suffix = next((s for s in (".seg.nrrd", ".mrk.json") if path.name.endswith(s)), path.suffix)
    partial = path.with_name(f".{uuid.uuid4().hex}.partial{suffix}")  # the extension picks the format
    storage.SetFileName(str(partial))
    try:
        if not storage.WriteData(node):
            raise SceneIOError(f"could not write '{path.name}'")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        storage.SetFileName(str(path))


def save_markups(slicer_app, node, path: Path) -> None:
    _write_with_storage_node(slicer_app.scene, node, path)


def save_segmentation(slicer_app, node, path: Path) -> None:
    if node is None or node.GetSegmentation().GetNumberOfSegments() == 0:
        raise SceneIOError("there is no segment to save yet: run SPD or paint first")
    _write_with_storage_node(slicer_app.scene, node, path)


def segment_voxels(node, segment_id: str) -> int:
    """Voxels of one segment (its own label value in a shared labelmap layer)."""
    import numpy as np
    from vtkmodules.util.numpy_support import vtk_to_numpy

    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(node, segment_id, image):
        return 0
    scalars = image.GetPointData().GetScalars()
    return 0 if scalars is None else int(np.count_nonzero(vtk_to_numpy(scalars)))
