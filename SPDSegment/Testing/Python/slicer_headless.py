"""Run the SPDSegment module file outside the Slicer application, on slicer-core's real MRML.

slicer-core has MRML, vtk, the module logics and ``slicer.util``, but not Qt, CTK, the
``ScriptedLoadableModule`` base classes, ``slicer.i18n``, ``slicer.app``, the parameter-node
wrapper or the PyTorch extension. This file stands in for exactly those, and each stand-in is at
least as strict as Slicer itself on every rule the module relies on (read from Slicer's source,
release 5.10 to main):

* **parameter-node wrapper**: annotations are checked when the class is defined (unsupported types
  fail); defaults are written and validated when the wrapper is built (``Choice`` / ``WithinRange``
  / a Union of nodes without ``None`` fail); values persist in the real ``vtkMRMLScriptedModuleNode``;
  ``connectGui`` accepts only Slicer's annotation <-> widget pairs, matched by the exact widget
  class, and *instantiates every node class* a node combo box is bound to (abstract classes fail).
* **widgets** are built from the module's real ``.ui`` file (class, name, properties), so the
  widget code runs against the same names and ``SlicerParameterName`` bindings as in Slicer.
* **module discovery**: :func:`load_scripted_modules` treats every ``.py`` file in the module
  folder as a module and instantiates ``ClassNamedLikeFile(parent)``, as Slicer's factory does.
* **dialogs**: ``slicer.util.tryWithErrorDisplay`` is Slicer's own; the dialogs it and the module
  open are recorded in :data:`DIALOGS` so tests can assert that an error was (or was not) shown.
"""
from __future__ import annotations

import enum
import importlib.util
import logging
import pathlib
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import slicer
import slicer.util

from SPDSegmentLib.frontends.mrml_headless import boot_headless_slicer

DIALOGS: list[tuple[str, str]] = []  # (kind, text) of every dialog the module opened
CONFIRM_ANSWERS: list[bool] = []  # answers for confirmOkCancelDisplay, in order (default: True)


def boot():
    scene = boot_headless_slicer()
    _install_gui_standins()
    return scene


# --- Qt widgets from the .ui file ---------------------------------------------------------------
class FakeWidget:
    """One widget of a .ui file: its class name, object name and properties, plus the state the
    module reads and writes (text, enabled, value, ...). Signals are recorded and can be emitted."""

    def __init__(self, class_name: str, name: str, properties: dict, children: list | None = None) -> None:
        self.className = class_name
        self.name = name
        self._properties = dict(properties)
        self.children = children or []
        self._slots: dict[str, list] = defaultdict(list)
        self.text = str(properties.get("text", ""))
        self.toolTip = str(properties.get("toolTip", ""))
        self.enabled = True
        self.visible = True
        self.checked = bool(properties.get("checked", False))
        self.value = properties.get("value", 0)
        self.minimum = properties.get("minimum", 0)
        self.maximum = properties.get("maximum", 99)
        self.currentPath = ""
        self.items: list[str] = []
        self.currentText = ""
        self.nodeTypes = properties.get("nodeTypes", [])
        self.currentNodeValue = None
        self.mrmlScene = None

    def isWidgetType(self) -> bool:
        return True

    def property(self, name: str):
        return self._properties.get(name)

    def setProperty(self, name: str, value) -> None:
        self._properties[name] = value

    def findChildren(self, _cls=None) -> list:
        out = []
        for child in self.children:
            out.append(child)
            out.extend(child.findChildren())
        return out

    def connect(self, signal: str, slot) -> None:
        self._slots[signal].append(slot)

    def emit(self, signal: str, *args) -> None:
        """Call the connected slots as PythonQt does: a slot taking fewer arguments than the signal
        carries gets the leading ones (the template connects clicked(bool) to a no-argument slot)."""
        import inspect

        for slot in list(self._slots[signal]):
            params = inspect.signature(slot).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in params):
                slot(*args)
            else:
                slot(*args[:len([p for p in params if p.default is p.empty])])

    def click(self) -> None:
        if self.enabled:
            self.emit("clicked(bool)", False)

    def setValue(self, value) -> None:
        self.value = value

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene
        for child in self.findChildren():
            child.mrmlScene = scene

    def setCurrentNode(self, node) -> None:
        if self.mrmlScene is None:
            raise RuntimeError(f"{self.name}: setCurrentNode before setMRMLScene")
        self.currentNodeValue = node

    def currentNode(self):
        return self.currentNodeValue

    def __repr__(self) -> str:
        return f"<{self.className} {self.name}>"


def _property_value(prop: ET.Element):
    child = next(iter(prop))
    if child.tag == "stringlist":
        return [s.text or "" for s in child]
    if child.tag in ("bool",):
        return child.text == "true"
    if child.tag in ("number", "double"):
        return float(child.text) if child.tag == "double" else int(child.text)
    return child.text or ""


def _build(element: ET.Element) -> FakeWidget:
    properties = {p.get("name"): _property_value(p) for p in element.findall("property") if len(p)}
    children = [_build(w) for w in element.iter("widget") if w is not element and _parent_widget(element, w)]
    return FakeWidget(element.get("class"), element.get("name"), properties, children)


def _parent_widget(root: ET.Element, target: ET.Element) -> bool:
    """True when ``target``'s nearest widget ancestor is ``root``."""
    def walk(node, nearest):
        for child in node:
            if child is target:
                return nearest is root
            found = walk(child, child if child.tag == "widget" else nearest)
            if found is not None:
                return found
        return None
    return bool(walk(root, root))


def load_ui(path: str) -> FakeWidget:
    if not Path(path).is_file():
        raise RuntimeError(f"loadUI: no such file {path}")
    return _build(ET.parse(path).getroot().find("widget"))


def child_widget_variables(widget: FakeWidget) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{w.name: w for w in widget.findChildren() if w.name})


# --- the parameter-node wrapper -----------------------------------------------------------------
class Choice:
    def __init__(self, choices) -> None:
        self.choices = tuple(choices)

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {list(self.choices)}")


class WithinRange:
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
              pathlib.PureWindowsPath)
SIMPLE_DEFAULTS = {str: "", int: 0, float: 0.0, bool: False}


def _split(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, extras
    return annotation, []


def _is_node_class(t) -> bool:
    return isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode)


def _union_args(t) -> tuple | None:
    return typing.get_args(t) if typing.get_origin(t) is typing.Union else None


def _check_serializable(t, owner: str, member: str) -> None:
    ok = (t in SIMPLE_DEFAULTS or t in PATH_TYPES or _is_node_class(t) or t is type(None)
          or (isinstance(t, type) and issubclass(t, enum.Enum)))
    if _union_args(t) is not None:
        for arg in _union_args(t):
            _check_serializable(_split(arg)[0], owner, member)
        ok = True
    if typing.get_origin(t) in (list, tuple, dict):
        ok = True
    if not ok:
        # Slicer raises a plain Exception here
        raise Exception(f"Unable to create serializer for {owner} member {member}")  # noqa: TRY002


def _default_of(t):
    if t in SIMPLE_DEFAULTS:
        return SIMPLE_DEFAULTS[t]
    if t in PATH_TYPES:
        return t()
    if _is_node_class(t):
        return None
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return next(iter(t))
    args = _union_args(t)
    if args is not None:
        if len(args) == 2 and type(None) in args:
            return None
        return _default_of(_split(args[0])[0])
    return None


def _write_check(t, value, name: str) -> None:
    """Refuse what Slicer's serializers refuse when writing ``value``."""
    args = _union_args(t)
    if args is not None:
        if value is None and type(None) not in args:
            raise TypeError(f"Unable to write value '{value}' of type '{type(value)}'")
        if value is not None and not any(isinstance(value, _split(a)[0]) for a in args
                                         if isinstance(_split(a)[0], type)):
            raise TypeError(f"Unable to write value '{value}' of type '{type(value)}'")
        return
    if _is_node_class(t):
        if value is not None and not isinstance(value, t):
            raise TypeError(f"{name}: expected {t.__name__}, got {type(value).__name__}")
        return
    if t is bool and not isinstance(value, bool):
        raise TypeError(f"{name}: expected bool, got {type(value).__name__}")
    if t in (int,) and (not isinstance(value, int) or isinstance(value, bool)):
        raise TypeError(f"{name}: expected int, got {type(value).__name__}")
    if t is float and not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected float, got {type(value).__name__}")
    if t is str and not isinstance(value, str):
        raise TypeError(f"{name}: expected str, got {type(value).__name__}")
    if t in PATH_TYPES and not isinstance(value, pathlib.PurePath):
        raise TypeError(f"{name}: expected a path, got {type(value).__name__}")


class _ConnectorError(RuntimeError):
    pass


def _connector_for(widget: FakeWidget, annotation, param: str):
    """Slicer's connector choice: the exact widget class and the unannotated data type."""
    t, extras = _split(annotation)
    cls = widget.className
    choice = next((e for e in extras if isinstance(e, Choice)), None)
    bounds = next((e for e in extras if isinstance(e, WithinRange)), None)
    fail = _ConnectorError(f"Unable to create GUI connector from datatype '{annotation}' to widget type "
                           f"'{cls}'.")
    if cls in ("QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"):
        if t is bool:
            return "checked"
        raise fail
    if cls in ("QSlider", "QSpinBox"):
        if t is int:
            if cls == "QSlider" and bounds is None:
                raise RuntimeError("Cannot have a connection to QSlider where the int type is unbounded.")
            # Slicer's QSliderOrSpinBoxToIntConnector sets the range from WithinRange, else to the int32 range
            widget.minimum, widget.maximum = (bounds.minimum, bounds.maximum) if bounds else (-2**31, 2**31 - 1)
            return "value"
        raise fail
    if cls in ("QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
               "qMRMLSpinBox"):
        if t in (float, int):
            if cls in ("ctkSliderWidget", "qMRMLSliderWidget") and bounds is None:
                raise RuntimeError(f"Cannot have a connection to {cls} where the float types is unbounded.")
            if bounds is not None:
                widget.minimum, widget.maximum = bounds.minimum, bounds.maximum
            return "value"
        raise fail
    if cls in ("QComboBox", "ctkComboBox"):
        if t in (int, float, str, bool):
            if choice is None:
                raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
            widget.items = [str(c) for c in choice.choices]
            return "currentText"
        if not isinstance(t, type):
            raise TypeError("issubclass() arg 1 must be a class")
        if issubclass(t, enum.Enum):
            widget.items = [m.name for m in t]
            return "currentText"
        raise fail
    if cls in ("QLineEdit", "QLabel", "QTextEdit"):
        if t is str:
            return "text"
        raise fail
    if cls in ("ctkPathLineEdit", "ctkDirectoryButton"):
        if t in PATH_TYPES:
            return "currentPath"
        raise fail
    if cls == "qMRMLNodeComboBox":
        members = [t] if _is_node_class(t) else [_split(a)[0] for a in (_union_args(t) or ())]
        if not members or not all(_is_node_class(m) or m is type(None) for m in members):
            raise fail
        # Slicer reads each class name from an instance: abstract classes cannot be instantiated
        widget.nodeTypes = [m().GetClassName() for m in members if m is not type(None)]
        return "node"
    raise fail


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    members = {}
    for name, annotation in hints.items():
        base, extras = _split(annotation)
        _check_serializable(base, cls, name)
        default = getattr(cls, name) if hasattr(cls, name) else _default_of(base)
        members[name] = (annotation, base, extras, default)

    def read(self, name):
        _annotation, base, _extras, _default = members[name]
        node = self.parameterNode
        if _is_node_class(base) or _union_args(base) is not None and all(
                _is_node_class(_split(a)[0]) or _split(a)[0] is type(None) for a in _union_args(base)):
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        if base is bool:
            return text == "True"
        if base in (int, float):
            return base(text)
        if base in PATH_TYPES:
            return base(text)
        return text

    def write(self, name, value):
        _annotation, base, extras, _default = members[name]
        _write_check(base, value, name)
        for extra in extras:
            if hasattr(extra, "validate"):
                extra.validate(value)
        node = self.parameterNode
        if _is_node_class(base) or _union_args(base) is not None and all(
                _is_node_class(_split(a)[0]) or _split(a)[0] is type(None) for a in _union_args(base)):
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        else:
            node.SetParameter(name, str(value))

    def __init__(self, parameterNode, prefix=None):
        object.__setattr__(self, "parameterNode", parameterNode)
        object.__setattr__(self, "_guis", {})
        for name, (annotation, base, extras, default) in members.items():
            if not parameterNode.HasParameter(name) and parameterNode.GetNodeReference(name) is None:
                write(self, name, default)  # defaults are written, and validated, at construction

    def __getattr__(self, name):
        if name in members:
            return read(self, name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name in members:
            write(self, name, value)
        else:
            object.__setattr__(self, name, value)

    def connectGui(self, gui):
        if gui.isWidgetType() if hasattr(gui, "isWidgetType") else False:
            widgets = gui.findChildren()
        else:
            widgets = list(vars(gui).values())
        mapping = {}
        for widget in widgets:
            param = widget.property("SlicerParameterName")
            if param:
                mapping[param] = widget
        for param in mapping:
            if param not in members:
                raise ValueError(f"Cannot find a param with the given name: {param}\n  Found parameters "
                                 f"{list(members)}")
        bound = {param: (widget, _connector_for(widget, members[param][0], param)) for param, widget in mapping.items()}
        for param, (widget, attribute) in bound.items():  # parameter values -> widgets, immediately
            value = read(self, param)
            if attribute == "node":
                widget.setCurrentNode(value)
            elif attribute == "currentPath":
                widget.currentPath = str(value)
            else:
                setattr(widget, attribute, str(value) if attribute == "currentText" else value)
        tag = len(self._guis) + 1
        self._guis[tag] = bound
        return tag

    def disconnectGui(self, tag):
        self._guis.pop(tag, None)

    def forward(n: str):
        return lambda self, *a: getattr(self.parameterNode, n)(*a)

    for name in ("StartModify", "EndModify", "AddObserver", "RemoveObserver", "Modified"):
        setattr(cls, name, forward(name))
    cls.__init__ = __init__
    cls.__getattr__ = __getattr__
    cls.__setattr__ = __setattr__
    cls.connectGui = connectGui
    cls.disconnectGui = disconnectGui
    for name in members:
        if name in cls.__dict__:
            delattr(cls, name)  # the class attributes were defaults; values live in the node
    cls.allParameters = {n: m[0] for n, m in members.items()}
    return cls


# --- module base classes, slicer.app, dialogs ---------------------------------------------------
class _ModuleParent:
    """What Slicer hands a scripted module: a qSlicerScriptedLoadableModule with these attributes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.title = ""
        self.categories: list = []
        self.dependencies: list = []
        self.contributors: list = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.isEntered = False


class _App:
    """``slicer.app``: the version of the slicer-core release in use, no event loop."""

    def __init__(self) -> None:
        from importlib.metadata import version

        major, minor = version("slicer-core").split(".")[:2]
        self.majorVersion, self.minorVersion = int(major), int(minor)
        self.testing = False
        self.cursor_depth = 0

    def testingEnabled(self) -> bool:
        return self.testing

    def processEvents(self) -> None:
        pass

    def setOverrideCursor(self, cursor) -> None:
        self.cursor_depth += 1

    def restoreOverrideCursor(self) -> None:
        self.cursor_depth -= 1


def _record(kind):
    def display(text, *args, **kwargs):
        DIALOGS.append((kind, str(text)))
        logging.info("%s dialog: %s", kind, text)
    return display


def _confirm(text, *args, **kwargs) -> bool:
    DIALOGS.append(("confirm", str(text)))
    return CONFIRM_ANSWERS.pop(0) if CONFIRM_ANSWERS else True


def load_scripted_modules(folder: str | Path) -> dict[str, object]:
    """Slicer's scripted-module factory: every ``*.py`` directly in ``folder`` is a module; its class
    named like the file is instantiated with one argument, the module's parent object."""
    modules = {}
    for path in sorted(Path(folder).glob("*.py")):
        name = path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        cls = getattr(module, name, None)
        if cls is None:
            raise RuntimeError(f"Failed to load scripted loadable module: class {name} was not found in file {path}")
        modules[name] = cls(_ModuleParent(str(path)))
    return modules


def _install_gui_standins() -> None:
    class _Anything(type):
        """Qt names the module only passes through (enums, flags): any attribute, any call."""

        def __getattr__(cls, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Anything(attr, (), {"__init__": lambda self, *a, **k: None})

    class QTimer:
        """Deterministic timers: a single-shot callback runs at once (no event loop here)."""

        @staticmethod
        def singleShot(msec, callback):
            callback()

    for name in ("qt", "ctk"):
        sink = types.ModuleType(name)
        def sink_attribute(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Anything(attr, (), {"__init__": lambda self, *a, **k: None})

        sink.__getattr__ = sink_attribute
        if name == "qt":
            sink.QTimer = QTimer
        sys.modules.setdefault(name, sink)

    slicer.app = _App()
    slicer.util.loadUI = load_ui
    slicer.util.childWidgetVariables = child_widget_variables
    slicer.util.errorDisplay = _record("error")
    slicer.util.warningDisplay = _record("warning")
    slicer.util.infoDisplay = _record("info")
    slicer.util.confirmOkCancelDisplay = _confirm
    slicer.util.delayDisplay = lambda text, *a, **k: logging.info(text)

    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = type(self).__name__
            slicer.selfTests = getattr(slicer, "selfTests", {})
            slicer.selfTests[self.moduleName] = getattr(self, "runTest", None)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent if parent is not None else _ModuleParent("")
            self.moduleName = type(self).__name__.removesuffix("Widget")
            module_file = sys.modules[type(self).__module__].__file__
            self._resources = Path(module_file).resolve().parent / "Resources"
            self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

        def resourcePath(self, filename: str) -> str:
            return str(self._resources / filename)

        def setup(self) -> None:
            pass

    class ScriptedLoadableModuleLogic:
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
            DIALOGS.append(("delay", str(message)))

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
    pnw.parameterNodeWrapper = parameterNodeWrapper
    pnw.WithinRange = WithinRange
    pnw.Choice = Choice
    sys.modules["slicer.parameterNodeWrapper"] = pnw
    slicer.parameterNodeWrapper = pnw

    torch_utils = types.ModuleType("PyTorchUtils")

    class PyTorchUtilsLogic:
        """The PyTorch extension's logic as far as the module uses it; it never installs here."""

        @staticmethod
        def torchInstalled() -> bool:
            return importlib.util.find_spec("torch") is not None

        @property
        def torch(self):
            import torch

            return torch

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            raise RuntimeError("the headless tests never install torch")

    torch_utils.PyTorchUtilsLogic = PyTorchUtilsLogic
    sys.modules.setdefault("PyTorchUtils", torch_utils)
