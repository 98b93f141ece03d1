"""Headless Slicer: boot slicer-core once, make the module folder importable, clear the scene per test."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[1]
sys.path[:0] = [str(HERE), str(MODULE_DIR), str(MODULE_DIR.parent)]

import slicer_headless

slicer_headless.boot()


@pytest.fixture(autouse=True)
def clean_scene():
    import slicer

    slicer.mrmlScene.Clear(0)
    yield
    slicer.mrmlScene.Clear(0)


@pytest.fixture(scope="session")
def cta_case():
    """(volume, aorta label, label-derived centerline) of the real CTA sample, read once per session."""
    from SPDSegmentLib.evaluation import sample_data
    from SPDSegmentLib.evaluation.skeleton import centerline_from_label
    from SPDSegmentLib.io import read_label, read_volume

    volume = read_volume(sample_data.path("cta/image.nii.gz"))
    label = read_label(sample_data.path("cta/aorta.nii.gz"), volume)
    return volume, label, centerline_from_label(volume, label)
