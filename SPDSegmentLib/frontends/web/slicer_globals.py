"""Point ``slicer.mrmlScene`` / ``slicer.modules`` at one session's scene for the length of a call.

``slicer.util`` functions that the MRML logic uses (``updateSegmentBinaryLabelmapFromArray`` makes a
temporary label volume through ``slicer.modules.volumes.logic()`` and removes it from
``slicer.mrmlScene``) look these globals up. trame-slicer sets neither, and with one scene per
browser session no single value is right, so they are set around each call. All such calls run on
the server's event-loop thread, one at a time, so two sessions never see each other's scene.
"""
from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import slicer

_MISSING = object()


def _modules_namespace(slicer_app) -> types.SimpleNamespace:
    logics = {"volumes": slicer_app.volumes_logic, "segmentations": slicer_app.segmentations_logic,
              "markups": slicer_app.markups_logic._logic, "colors": slicer_app.color_logic,
              "subjecthierarchy": slicer_app.subject_hierarchy_logic}
    return types.SimpleNamespace(**{name: types.SimpleNamespace(logic=lambda lg=lg: lg)
                                    for name, lg in logics.items()})


@contextmanager
def session_globals(slicer_app) -> Iterator[None]:
    """``slicer.mrmlScene`` and ``slicer.modules`` of ``slicer_app`` inside the block, restored after."""
    saved = (getattr(slicer, "mrmlScene", _MISSING), getattr(slicer, "modules", _MISSING))
    slicer.mrmlScene = slicer_app.scene
    slicer.modules = _modules_namespace(slicer_app)
    try:
        yield
    finally:
        for name, value in zip(("mrmlScene", "modules"), saved, strict=True):
            if value is _MISSING:
                delattr(slicer, name)
            else:
                setattr(slicer, name, value)
