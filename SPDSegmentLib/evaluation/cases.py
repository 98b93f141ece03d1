"""The evaluation's case folder: a contract other datasets plug into without code changes.

    DIR/<case>/image.nii.gz | image.nrrd | image.mha | image/ (one DICOM series)
    DIR/<case>/label.nii.gz | label.nrrd | label.seg.nrrd      (binary, or --label-value K)
    DIR/<case>/centerline.mrk.json                             (optional: a real centerline)
    DIR/<case>/case.json                                       (optional: preset, label_value, source)

:func:`build_sample_cases` writes such a folder from the fetched TotalSegmentator sample data: the
CTA aorta and every tubular label of the abdominal CT, CT-DICOM and MRI examples with enough slices.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import InputError, read_label, read_volume, resample_like, write_volume
from . import sample_data

IMAGE_NAMES = ("image.nii.gz", "image.nrrd", "image.mha", "image.nii", "image")
LABEL_NAMES = ("label.nii.gz", "label.nrrd", "label.seg.nrrd", "label.nii", "label.mha")
TUBULAR = ("aorta", "inferior_vena_cava", "colon", "small_bowel", "duodenum", "esophagus",
           "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right")
# Solid organs a centerline also runs through (the brief's kidney; a large organ): never used while
# developing the method, so they test how it carries over to structures it was not tuned on.
ORGANS = ("liver", "spleen", "kidney_left")
SAMPLE_CASES_VERSION = 2  # 2: organs added; the folder is rebuilt when its version differs


def sample_cases_stale(folder: str | Path, default: str | Path | None = None) -> bool:
    """True when ``folder`` must be (re)built: it is missing, or it holds sample cases of another
    version (the default folder from before versions were written counts as old). A folder of the
    user's own cases is never rebuilt."""
    folder = Path(folder)
    if not folder.exists():
        return True
    marker = folder / "sample_cases.json"
    if not marker.is_file():
        return default is not None and folder.resolve() == Path(default).resolve()
    try:
        return json.loads(marker.read_text()).get("version") != SAMPLE_CASES_VERSION
    except ValueError:
        return True


@dataclass
class Case:
    name: str
    image: Path
    label: Path
    centerline: Path | None
    info: dict


def case_folders(folder: str | Path, what: str = "case") -> list[tuple[Path, Path | None]]:
    """(folder, image) of every case folder below ``folder`` (hidden folders skipped); the image is
    None when the folder has none of the accepted names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    return [(sub, next((sub / n for n in IMAGE_NAMES if (sub / n).exists()), None))
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]


def find_cases(folder: str | Path) -> list[Case]:
    cases = []
    for sub, image in case_folders(folder):
        label = next((sub / n for n in LABEL_NAMES if (sub / n).exists()), None)
        if image is None or label is None:
            raise InputError(f"case {sub.name}: needs image.(nii.gz|nrrd|mha) or image/ and label.* "
                             f"(found {sorted(p.name for p in sub.iterdir())})")
        info = json.loads((sub / "case.json").read_text()) if (sub / "case.json").exists() else {}
        centerline = sub / "centerline.mrk.json"
        cases.append(Case(sub.name, image, label, centerline if centerline.exists() else None, info))
    if not cases:
        raise InputError(f"{folder} holds no case folders")
    return cases


def _write_case(out: Path, name: str, image_src: Path, volume, mask: np.ndarray, info: dict) -> None:
    case = out / name
    case.mkdir(parents=True, exist_ok=True)
    if image_src.is_dir():
        shutil.copytree(image_src, case / "image", dirs_exist_ok=True)
    else:
        shutil.copyfile(image_src, case / "image.nii.gz")
    write_volume(volume.with_array(mask.astype(np.uint8), "label"), case / "label.nii.gz", overwrite=True)
    (case / "case.json").write_text(json.dumps(info, indent=2))


def build_sample_cases(out: str | Path, min_slices: int = 10, log=print) -> list[str]:
    """Write the case folder from the fetched sample data; returns the case names."""
    out = Path(out)
    names = []
    cta = read_volume(sample_data.path("cta/image.nii.gz"))
    aorta = read_label(sample_data.path("cta/aorta.nii.gz"), cta)
    _write_case(out, "cta_aorta", sample_data.path("cta/image.nii.gz"), cta, aorta,
                {"preset": "ct-angio", "modality": "CT", "structure": "aorta", "group": "tubular",
                 "source": "TotalSegmentator 2.18.0 sdist: aorta_report/test_result/models/ct_cropped.nii.gz",
                 "license": sample_data.LICENSE_NOTE})
    names.append("cta_aorta")
    for key, image_name, preset, modality in (("abdomen_ct", "abdomen_ct/image.nii.gz", "ct-abdomen", "CT"),
                                              ("abdomen_ct_dicom", "abdomen_ct_dicom/image", "ct-abdomen", "CT"),
                                              ("abdomen_mr", "abdomen_mr/image.nii.gz", "mri", "MR")):
        image_path = sample_data.path(image_name)
        volume = read_volume(image_path)
        labels = read_volume(sample_data.path(f"{key}/labels.nii.gz"))
        labels = resample_like(labels, volume).array
        cmap = sample_data.class_map(key)
        for value, structure in sorted(cmap.items()):
            if structure not in TUBULAR + ORGANS:
                continue
            mask = labels == value
            src = volume.with_array(mask).slices()
            n = int(np.count_nonzero(src.reshape(len(src), -1).any(1)))
            if n < min_slices:
                continue
            name = f"{key}_{structure}"
            _write_case(out, name, image_path, volume, mask,
                        {"preset": preset, "modality": modality, "structure": structure, "label_slices": n,
                         "group": "organ" if structure in ORGANS else "tubular",
                         "source": f"TotalSegmentator 2.18.0 sdist: {image_name} (label value {value})",
                         "license": sample_data.LICENSE_NOTE})
            names.append(name)
    (out / "sample_cases.json").write_text(json.dumps({"version": SAMPLE_CASES_VERSION, "cases": names}, indent=2))
    log(f"wrote {len(names)} cases to {out}: {', '.join(names)}")
    return names
