"""Headless Slicer: boot slicer-core once, make the module folder importable, clear the scene per test."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[1]
sys.path[:0] = [str(HERE), str(MODULE_DIR), str(MODULE_DIR.parent)]

import slicer_headless  # noqa: E402

slicer_headless.boot()


@pytest.fixture(autouse=True)
def clean_scene():
    import slicer

    slicer.mrmlScene.Clear(0)
    yield
    slicer.mrmlScene.Clear(0)
