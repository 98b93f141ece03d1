"""Test helpers shared by the engine tests."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np

from SPDSegmentLib.volume import Volume


def crop_slices(volume: Volume, k0: int, k1: int) -> Volume:
    """Axial slab k0..k1-1 of a k-axial volume, with its origin moved so RAS stays exact."""
    m = volume.ijk_to_ras.copy()
    m[:3, 3] = volume.ijk_to_ras_points([[0, 0, k0]])[0]
    return Volume(volume.array[k0:k1].copy(), m, volume.name)


def oblique_flipped_geometry() -> np.ndarray:
    """IJK->RAS with flipped axes, anisotropic spacing and a 20-degree tilt: axis bugs show here."""
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    flip = np.diag([-1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = rot @ flip @ np.diag([0.7, 0.9, 2.5])
    m[:3, 3] = [12.0, -30.0, 55.0]
    return m


def load_study(name: str) -> Iterator[ModuleType]:
    """A dev study (``studies/<name>.py``, a script, not a package) loaded as a module for a fixture
    (``yield from``): registered in ``sys.modules`` while in use, as its dataclasses and worker
    processes look it up there, and removed after."""
    path = Path(__file__).resolve().parents[1] / "studies" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]
