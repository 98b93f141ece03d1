"""Boot Slicer's core (the slicer-core wheel: real MRML, module logics, slicer.util) without Qt, and
provide the few GUI-only names the module file imports at file scope that slicer-core lacks.

Only GUI names are stood in for (qt, ctk, ScriptedLoadableModule base classes, i18n, the
parameter-node wrapper); MRML, vtk, slicer.util, the module logics and SPDSegmentLib are real.
"""
from __future__ import annotations

import logging
import sys
import types
import unittest

import slicer
from vtkmodules.vtkCommonCore import vtkCollection

_KEEP_ALIVE = None  # scene, application logic and module logics: must outlive every test


def boot() -> "slicer.vtkMRMLScene":
    global _KEEP_ALIVE
    if _KEEP_ALIVE:
        return _KEEP_ALIVE[0]
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
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, logic)
    colors.AddDefaultColorNodes()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    _KEEP_ALIVE = (scene, app, logics)
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{
        n.lower(): types.SimpleNamespace(logic=lambda lg=lg: lg) for n, lg in logics.items()})
    _install_gui_standins()
    return scene


class _Sink(types.ModuleType):
    """A module whose every attribute is a harmless callable class (for qt / ctk names)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})


def _install_gui_standins() -> None:
    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, _Sink(name))

    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent=None):
            self.parent = parent if parent is not None else types.SimpleNamespace()

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        """Parameter-node plumbing as in Slicer's class (which needs only slicer.mrmlScene)."""

        def __init__(self, parent=None):
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                return node
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            return slicer.mrmlScene.AddNode(node)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=0):
            logging.info(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    sys.modules["slicer.ScriptedLoadableModule"] = slm
    slicer.ScriptedLoadableModule = slm

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = i18n
    slicer.i18n = i18n

    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):  # pass-through: holds the node, persists nothing
        cls.__init__ = lambda self, node=None: setattr(self, "parameterNode", node)
        return cls

    pnw.parameterNodeWrapper = parameterNodeWrapper
    pnw.WithinRange = lambda lo, hi: ("range", lo, hi)
    pnw.Choice = lambda values: ("choice", tuple(values))
    sys.modules["slicer.parameterNodeWrapper"] = pnw
    slicer.parameterNodeWrapper = pnw
