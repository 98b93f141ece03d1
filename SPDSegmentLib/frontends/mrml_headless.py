"""Boot 3D Slicer's core (the ``slicer-core`` wheel: real MRML, module logics, ``slicer.util``)
in plain Python, without the Slicer application, so the MRML logic runs in batch scripts and tests.

Inside the Slicer application none of this is needed: the application has already done it.
"""
from __future__ import annotations

import types

_KEEP_ALIVE: tuple | None = None  # scene, application logic and module logics: must outlive every caller


def boot_headless_slicer():
    """Create the scene and the module logics once per process and register them where
    ``slicer.util`` looks for them (``slicer.mrmlScene``, ``slicer.modules.<name>.logic()``).

    The application logic must stay referenced for the whole process: the module logics hold a raw
    pointer to it, and collecting it makes the next segmentation call crash.
    """
    global _KEEP_ALIVE
    if _KEEP_ALIVE:
        return _KEEP_ALIVE[0]
    import slicer
    from vtkmodules.vtkCommonCore import vtkCollection

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    app.SetColorLogic(colors)
    app.SetSliceLogics(vtkCollection())
    app.SetViewLogics(vtkCollection())
    logics = {"Colors": colors, "Volumes": slicer.vtkSlicerVolumesLogic(),
              "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
              "Markups": slicer.vtkSlicerMarkupsLogic(),
              "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic()}
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)  # the Segmentations logic registers its converter rules here
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, logic)
    colors.AddDefaultColorNodes()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    _KEEP_ALIVE = (scene, app, logics)
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{
        n.lower(): types.SimpleNamespace(logic=lambda lg=lg: lg) for n, lg in logics.items()})
    return scene
