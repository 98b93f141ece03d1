"""The one folder the browser app may read and write (``serve --data DIR``).

Every path that comes from the page goes through :class:`DataFolder`, so a name such as
``../../etc/passwd``, an absolute path or a symbolic link that leads out of the folder is refused
before any file is opened. Nothing else in the web package touches user paths.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
MARKUPS_SUFFIX = ".mrk.json"
SEGMENTATION_SUFFIX = ".seg.nrrd"
_SAFE_NAME = re.compile(r"^\w[\w .,+()\[\]-]*$")  # one path component, no leading dot or dash


class DataPathError(ValueError):
    """A path from the page that is refused; the message is shown in the page."""


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128 (cheap: no DICOM parser needed)."""
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def safe_file_name(name: str) -> str:
    """The base name of an uploaded file, refused when it could mean anything but a plain file."""
    base = Path(str(name).replace("\\", "/")).name
    if not base or not _SAFE_NAME.match(base):
        raise DataPathError(f"refused file name {name!r}: use letters, digits, spaces and . , _ + - ( ) [ ]")
    return base


@dataclass(frozen=True)
class DataEntry:
    """One loadable item of the folder: a volume file or a DICOM series folder."""

    relative: str
    kind: str  # "volume" | "dicom" | "markups" | "segmentation"


class DataFolder:
    """Resolves page-supplied names under one root and lists what can be loaded from it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def resolve(self, relative: str) -> Path:
        """``relative`` as a path inside the folder; refuses anything that leads out of it."""
        text = str(relative or "").strip()
        if not text:
            raise DataPathError("give a file name")
        if "\x00" in text:
            raise DataPathError("refused file name with a NUL character")
        candidate = Path(text)
        if candidate.is_absolute():
            raise DataPathError(f"refused '{text}': give a name relative to the data folder, not an absolute path")
        resolved = (self.root / candidate).resolve()  # follows symbolic links, so a link out is caught too
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise DataPathError(f"refused '{text}': it leads out of the data folder")
        return resolved

    def existing(self, relative: str, suffixes: tuple[str, ...] = ()) -> Path:
        path = self.resolve(relative)
        if not path.exists():
            raise DataPathError(f"'{relative}' does not exist in the data folder")
        if suffixes and path.is_file() and not path.name.lower().endswith(suffixes):
            raise DataPathError(f"'{relative}' is not one of {', '.join(suffixes)}")
        return path

    def for_writing(self, relative: str, suffix: str, overwrite: bool) -> Path:
        """A new file path ending in ``suffix`` (appended when missing); existing files need ``overwrite``."""
        text = str(relative or "").strip()
        if text and not text.lower().endswith(suffix):
            text += suffix
        path = self.resolve(text)
        if path.is_dir():
            raise DataPathError(f"'{relative}' is a folder")
        if path.exists() and not overwrite:
            raise DataPathError(f"'{path.name}' exists already: choose another name or tick 'overwrite'")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def entries(self, max_depth: int = 2, limit: int = 500) -> list[DataEntry]:
        """Volumes, DICOM folders, markups and segmentations, sorted by path (depth-limited, capped)."""
        found: list[DataEntry] = []

        def walk(folder: Path, depth: int) -> None:
            try:
                children = sorted(folder.iterdir())
            except OSError:
                return
            files = [c for c in children
                     if c.is_file() and not c.name.startswith(".") and c.resolve().is_relative_to(self.root)]
            if folder != self.root and files and any(is_dicom_file(f) for f in files[:20]):
                found.append(DataEntry(self.relative(folder), "dicom"))
            for child in files:
                name = child.name.lower()
                if name.endswith(SEGMENTATION_SUFFIX):
                    found.append(DataEntry(self.relative(child), "segmentation"))
                elif name.endswith(MARKUPS_SUFFIX):
                    found.append(DataEntry(self.relative(child), "markups"))
                elif name.endswith(VOLUME_SUFFIXES):
                    found.append(DataEntry(self.relative(child), "volume"))
            if depth < max_depth:
                for child in children:
                    if child.is_dir() and not child.name.startswith(".") and child.resolve().is_relative_to(self.root):
                        walk(child, depth + 1)

        walk(self.root, 0)
        return found[:limit]

    def first_volume(self) -> Path | None:
        for entry in self.entries():
            if entry.kind in ("volume", "dicom"):
                return self.root / entry.relative
        return None
