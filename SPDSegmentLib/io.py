"""File formats: volumes (NRRD, NIfTI, MHA, DICOM folders via SimpleITK), Slicer segmentations
(.seg.nrrd) and Slicer markups (.mrk.json).

SimpleITK speaks LPS; the engine speaks RAS. The conversion happens here and only here.
Writers never overwrite an existing file unless ``overwrite=True``: a user's files are never lost.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .method.prompts import Centerline
from .volume import Volume, lps_ras_flip

VOLUME_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")


class InputError(ValueError):
    """Bad user input: the message says what is wrong and what to do."""


def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found: {path}")


def guard_output(path: Path, overwrite: bool, create_parent: bool = True) -> None:
    """Refuse to replace an existing file (unless ``overwrite``) or to write where it cannot; with
    ``create_parent=False`` nothing is created, so a check before a long run leaves no trace."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; choose another output path or pass overwrite=True "
                         "(--overwrite on the command line)")
    parent = path.parent
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: {existing or parent} is not a writable folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"cannot write {path}: the file is read-only")
    if create_parent:
        parent.mkdir(parents=True, exist_ok=True)


def _sitk_to_volume(image: sitk.Image, name: str) -> Volume:
    if image.GetDimension() != 3:
        raise InputError(f"{name}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=float)
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return Volume(sitk.GetArrayFromImage(image), lps_ras_flip() @ ijk_to_lps, name)


def volume_to_sitk(volume: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """SimpleITK image with ``volume``'s geometry and ``array`` (default: the volume's voxels)."""
    image = sitk.GetImageFromArray(volume.array if array is None else array)
    ijk_to_lps = lps_ras_flip() @ volume.ijk_to_ras
    spacing = volume.spacing
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple((ijk_to_lps[:3, :3] / spacing).ravel().tolist()))
    image.SetOrigin(tuple(ijk_to_lps[:3, 3].tolist()))
    return image


def read_volume(path: str | Path, name: str | None = None) -> Volume:
    """Read a 3D scalar volume: .nrrd, .nii(.gz), .mha/.mhd, or a folder of one DICOM series."""
    path = Path(path)
    _check_exists(path, "Volume")
    name = name or path.name.split(".")[0]
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{path} is a folder but holds no DICOM series")
            if len(series) > 1:
                raise InputError(f"{path} holds {len(series)} DICOM series; point to a folder with one series")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"Cannot read volume {path}: {str(exc).strip().splitlines()[-1]}") from exc
    return _sitk_to_volume(image, name)


def resample_like(moving: Volume, reference: Volume, nearest: bool = True) -> Volume:
    """Resample ``moving`` onto ``reference``'s grid through physical space (labels: nearest)."""
    out = sitk.Resample(volume_to_sitk(moving), volume_to_sitk(reference), sitk.Transform(),
                        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0.0)
    return reference.with_array(sitk.GetArrayFromImage(out), moving.name)


def write_volume(volume: Volume, path: str | Path, overwrite: bool = False) -> Path:
    path = Path(path)
    guard_output(path, overwrite)
    sitk.WriteImage(volume_to_sitk(volume), str(path), useCompression=True)
    return path


# --- .seg.nrrd ------------------------------------------------------------------------------------
def write_segmentation(reference: Volume, masks: dict[str, np.ndarray], path: str | Path,
                       colors: dict[str, tuple[float, float, float]] | None = None,
                       overwrite: bool = False) -> Path:
    """Write binary masks (``[k, j, i]`` uint8 each) as a Slicer .seg.nrrd, one label layer.

    Segments share one labelmap (values 1..N), which is what Slicer writes for non-overlapping
    segments; overlapping masks are rejected rather than silently merged.
    """
    path = Path(path)
    if not str(path).endswith(".seg.nrrd"):
        raise InputError(f"{path}: a Slicer segmentation file must end in .seg.nrrd")
    if not masks:
        raise InputError("no segments to write")
    guard_output(path, overwrite)
    labelmap = np.zeros(reference.array.shape, dtype=np.uint8)
    for value, (name, mask) in enumerate(masks.items(), start=1):
        if mask.shape != labelmap.shape:
            raise InputError(f"segment {name!r}: shape {mask.shape} != volume shape {labelmap.shape}")
        if np.any(labelmap[mask > 0]):
            raise InputError(f"segment {name!r} overlaps an earlier segment; write them to separate files")
        labelmap[mask > 0] = value
    image = volume_to_sitk(reference, labelmap)
    default_colors = [(0.9, 0.35, 0.3), (0.3, 0.7, 0.9), (0.5, 0.8, 0.4), (0.95, 0.8, 0.3)]
    _i_n, _j_n, _k_n = reference.shape_ijk
    for index, (name, mask) in enumerate(masks.items()):
        color = (colors or {}).get(name, default_colors[index % len(default_colors)])
        nz = np.argwhere(mask > 0)
        if len(nz):
            (k0, j0, i0), (k1, j1, i1) = nz.min(0), nz.max(0)
            extent = f"{i0} {i1} {j0} {j1} {k0} {k1}"
        else:
            extent = "0 -1 0 -1 0 -1"
        prefix = f"Segment{index}_"
        for key, value in {
            "ID": name, "Name": name, "NameAutoGenerated": "0",
            "Color": " ".join(f"{c:.6g}" for c in color), "ColorAutoGenerated": "0",
            "LabelValue": str(index + 1), "Layer": "0", "Extent": extent,
            "Tags": "Segmentation.Status:completed|Source:SPDSegment|",
        }.items():
            image.SetMetaData(prefix + key, value)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    image.SetMetaData("Segmentation_ConversionParameters", "")
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def read_segmentation(path: str | Path, reference: Volume | None = None) -> dict[str, Volume]:
    """Read a .seg.nrrd (one or several layers) into one binary Volume per segment name."""
    path = Path(path)
    _check_exists(path, "Segmentation")
    image = sitk.ReadImage(str(path))
    keys = set(image.GetMetaDataKeys())
    base = _sitk_to_volume(image if image.GetNumberOfComponentsPerPixel() == 1
                           else sitk.VectorIndexSelectionCast(image, 0), path.name)
    layers = sitk.GetArrayFromImage(image)
    if layers.ndim == 3:
        layers = layers[..., None]
    out: dict[str, Volume] = {}
    index = 0
    while f"Segment{index}_ID" in keys:
        name = image.GetMetaData(f"Segment{index}_Name") if f"Segment{index}_Name" in keys else \
            image.GetMetaData(f"Segment{index}_ID")
        value = int(image.GetMetaData(f"Segment{index}_LabelValue")) if f"Segment{index}_LabelValue" in keys else 1
        layer = int(image.GetMetaData(f"Segment{index}_Layer")) if f"Segment{index}_Layer" in keys else 0
        # Slicer may crop the labelmap to an extent offset; vectors are [k, j, i, layer]
        mask = (layers[..., layer] == value).astype(np.uint8)
        out[name] = base.with_array(mask, name)
        index += 1
    if not out:
        raise InputError(f"{path} has no Segment0_ID field: not a Slicer segmentation file")
    if reference is not None:
        out = {n: resample_like(v, reference) for n, v in out.items()}
    return out


def read_label(path: str | Path, reference: Volume, label_value: int | None = None,
               segment: str | None = None) -> np.ndarray:
    """Binary expert label on ``reference``'s grid, ``[k, j, i]`` uint8."""
    path = Path(path)
    if str(path).endswith(".seg.nrrd"):
        segments = read_segmentation(path, reference)
        if segment is None:
            if len(segments) != 1:
                raise InputError(f"{path} has segments {list(segments)}; name one")
            segment = next(iter(segments))
        if segment not in segments:
            raise InputError(f"{path} has no segment {segment!r}; it has {list(segments)}")
        return segments[segment].array.astype(np.uint8)
    label = resample_like(read_volume(path), reference)
    if label_value is None:
        values = np.unique(label.array)
        if len(values) > 2:
            raise InputError(f"{path} is a multi-label map ({len(values) - 1} labels); pass label_value")
        return (label.array > 0).astype(np.uint8)
    return (label.array == label_value).astype(np.uint8)


# --- .mrk.json ----------------------------------------------------------------------------------
_MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                   "Resources/Schema/markups-schema-v1.0.3.json#")


def read_markups(path: str | Path) -> Centerline:
    """Read a Slicer markups file (curve, closed curve, line or point list) as a RAS centerline."""
    path = Path(path)
    _check_exists(path, "Markups file")
    try:
        doc = json.loads(path.read_text())
        markups = doc["markups"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a Slicer .mrk.json markups file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(markups, list):
        raise InputError(f"{path}: 'markups' must be a list")
    if not markups:
        raise InputError(f"{path} holds no markups")
    if len(markups) > 1:
        raise InputError(f"{path} holds {len(markups)} markups; save the centerline on its own")
    markup = markups[0]
    if not isinstance(markup, dict):
        raise InputError(f"{path}: the markup is not an object")
    kind = markup.get("type", "")
    if kind not in ("Curve", "ClosedCurve", "Fiducial", "Line"):
        raise InputError(f"{path}: markups of type {kind!r} cannot serve as a centerline "
                         "(use a curve or a point list)")
    control_points = markup.get("controlPoints", [])
    if not isinstance(control_points, list):
        raise InputError(f"{path}: 'controlPoints' must be a list of points")
    points = []
    for index, cp in enumerate(control_points, start=1):
        if not isinstance(cp, dict):
            raise InputError(f"{path}: control point {index} is not an object with a 'position'")
        if cp.get("positionStatus", "defined") != "defined":
            continue
        position = cp.get("position")
        label = cp.get("label") or cp.get("id") or index
        if not isinstance(position, (list, tuple)) or len(position) != 3:
            raise InputError(f"{path}: control point {index} ({label}) needs a position of 3 numbers, "
                             f"got {position!r}")
        try:
            xyz = [float(v) for v in position]
        except (TypeError, ValueError):
            raise InputError(f"{path}: control point {index} ({label}) has a coordinate that is not a number: "
                             f"{position!r}") from None
        if any(isinstance(v, bool) for v in position) or not np.all(np.isfinite(xyz)):
            raise InputError(f"{path}: control point {index} ({label}) has a non-finite or invalid coordinate: "
                             f"{position!r}")
        points.append(xyz)
    if not points:
        raise InputError(f"{path}: the markup has no defined control points")
    ras = np.asarray(points, dtype=float)
    system = markup.get("coordinateSystem", "LPS")
    if system not in ("LPS", "RAS"):
        raise InputError(f"{path}: unknown coordinateSystem {system!r} (Slicer writes LPS or RAS)")
    if system == "LPS":
        ras = ras * [-1, -1, 1]
    # a curve runs as Slicer draws it: a cardinal spline through the control points (its default
    # curve type; a .mrk.json does not store another), a line straight, a point list not at all
    interpolation = {"Curve": "spline", "ClosedCurve": "closed-spline"}.get(kind, "linear")
    name = markup.get("name")
    return Centerline(ras, ordered=kind != "Fiducial",
                      name=name if isinstance(name, str) and name else path.name.split(".")[0],
                      interpolation=interpolation)


def markups_document(kind: str, name: str, ras: np.ndarray, labels: list[str] | None = None,
                     descriptions: list[str] | None = None,
                     color: tuple[float, float, float] = (1.0, 0.5, 0.5)) -> dict:
    """A .mrk.json document (stored in LPS, as Slicer writes it)."""
    lps = np.asarray(ras, dtype=float).reshape(-1, 3) * [-1, -1, 1]
    points = []
    for index, position in enumerate(lps):
        points.append({
            "id": str(index + 1),
            "label": labels[index] if labels else f"{name}-{index + 1}",
            "description": descriptions[index] if descriptions else "",
            "associatedNodeID": "", "position": [float(v) for v in position],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"})
    return {"@schema": _MARKUPS_SCHEMA, "markups": [{
        "type": kind, "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
        "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(points),
        "controlPoints": points, "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "color": list(color), "selectedColor": list(color),
                    "glyphScale": 1.5, "textScale": 1.5, "pointLabelsVisibility": False}}]}


def write_markups(path: str | Path, document: dict, overwrite: bool = False) -> Path:
    path = Path(path)
    if not str(path).endswith(".mrk.json"):
        raise InputError(f"{path}: a Slicer markups file must end in .mrk.json")
    guard_output(path, overwrite)
    path.write_text(json.dumps(document, indent=2))
    return path


def write_centerline(centerline: Centerline, path: str | Path, overwrite: bool = False) -> Path:
    """A centerline as Slicer markups; a closed curve stays closed when read back."""
    kind = "Fiducial" if not centerline.ordered else "ClosedCurve" if centerline.interpolation == "closed-spline" \
        else "Curve"
    return write_markups(path, markups_document(kind, centerline.name, centerline.points_ras),
                         overwrite=overwrite)
