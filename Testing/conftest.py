"""Shared fixtures: the real CTA sample (fetched in set-up) and the real bundled LiteMedSAM."""
from __future__ import annotations

import pytest
from _helpers import crop_slices

from SPDSegmentLib.evaluation import sample_data
from SPDSegmentLib.io import read_label, read_volume


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
    from SPDSegmentLib.evaluation.skeleton import centerline_from_label

    return centerline_from_label(*cta)


@pytest.fixture(scope="session")
def backend():
    from SPDSegmentLib.sam.backend import load_backend

    return load_backend("litemedsam", device="cpu")
