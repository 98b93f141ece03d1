"""Shared fixtures: the real CTA sample (fetched in set-up) and the real bundled LiteMedSAM."""
from __future__ import annotations

import numpy as np
import pytest

from SPDSegmentLib import sample_data
from SPDSegmentLib.io import read_label, read_volume
from SPDSegmentLib.volume import Volume


def crop_slices(volume: Volume, k0: int, k1: int) -> Volume:
    """Axial slab k0..k1-1 of a k-axial volume, with its origin moved so RAS stays exact."""
    m = volume.ijk_to_ras.copy()
    m[:3, 3] = volume.ijk_to_ras_points([[0, 0, k0]])[0]
    return Volume(volume.array[k0:k1].copy(), m, volume.name)


@pytest.fixture(scope="session")
def cta():
    """(volume, aorta label) of the real chest CTA; fails loudly when set-up was skipped."""
    if not sample_data.is_fetched():
        pytest.fail("sample data missing: run `python -m SPDSegmentLib fetch-data` (the README's set-up)")
    volume = read_volume(sample_data.path("cta/image.nii.gz"), "cta")
    return volume, read_label(sample_data.path("cta/aorta.nii.gz"), volume)


@pytest.fixture(scope="session")
def cta_slab(cta):
    """A 14-slice slab through the aortic arch region (two aortic crossings per slice)."""
    volume, label = cta
    return crop_slices(volume, 100, 114), label[100:114].copy()


@pytest.fixture(scope="session")
def cta_centerline(cta):
    """Reference centerline of the whole CTA aorta (label skeleton)."""
    from SPDSegmentLib.skeleton import centerline_from_label

    return centerline_from_label(*cta)


@pytest.fixture(scope="session")
def backend():
    from SPDSegmentLib.sam_backend import load_backend

    return load_backend("litemedsam", device="cpu")


def oblique_flipped_geometry() -> np.ndarray:
    """IJK->RAS with flipped axes, anisotropic spacing and a 20-degree tilt: axis bugs show here."""
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    flip = np.diag([-1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = rot @ flip @ np.diag([0.7, 0.9, 2.5])
    m[:3, 3] = [12.0, -30.0, 55.0]
    return m
