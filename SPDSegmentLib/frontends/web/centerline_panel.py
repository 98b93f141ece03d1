"""Centerline panel: a markups curve or point list placed and dragged in the views, loaded from and
saved to ``.mrk.json`` in the data folder.

Place mode is switched on only once the page is connected (``on_client_connected``): switched on
earlier, the slice views stay black (trame-slicer 2.0.0).
"""
from __future__ import annotations

import slicer
from trame.widgets import html
from trame.widgets import vuetify3 as v3

from ..mrml_logic import style_markups
from .context import SessionContext
from .data_folder import MARKUPS_SUFFIX, DataPathError
from .scene_io import SceneIOError, load_markups, save_markups

NODE_CLASSES = {"Curve": "vtkMRMLMarkupsCurveNode", "Point list": "vtkMRMLMarkupsFiducialNode"}
CENTERLINE_COLOR = (1.0, 0.85, 0.1)


class CenterlinePanel:
    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self._observed: list[tuple[object, int]] = []
        self.client_connected = False
        state = ctx.state
        state.cl_type = "Curve"
        state.cl_types = list(NODE_CLASSES)
        state.cl_points = 0
        state.placing = False
        state.cl_load_choice = None
        state.cl_save_name = "centerline.mrk.json"
        state.change("cl_type")(self._on_type)
        ctx.on("volume", lambda _node: self.new_node())
        ctx.on("effect", lambda name: name and self.set_placing(False))
        ctx.on("busy", lambda running: running and self.set_placing(False))
        interaction = ctx.slicer_app.markups_logic.interaction_node
        interaction.AddObserver(slicer.vtkMRMLInteractionNode.InteractionModeChangedEvent, self._on_mode)

    # --- node ----------------------------------------------------------------------------------
    def new_node(self, kind: str | None = None) -> None:
        kind = kind or self.ctx.state.cl_type
        node = self.ctx.scene.AddNewNodeByClass(NODE_CLASSES[kind], "Centerline")
        self._adopt(node)
        if self.client_connected:
            self.set_placing(True)

    def _adopt(self, node) -> None:
        """Make ``node`` the session's centerline: styled, observed, the previous one removed."""
        self._unobserve()
        self.ctx.remove_node(self.ctx.centerline_node)
        self.ctx.centerline_node = node
        style_markups(node, CENTERLINE_COLOR)
        for event in (slicer.vtkMRMLMarkupsNode.PointAddedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
                      slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent):
            self._observed.append((node, node.AddObserver(event, self._on_points)))
        self._on_points()

    def _unobserve(self) -> None:
        for node, tag in self._observed:
            node.RemoveObserver(tag)
        self._observed = []

    def _on_points(self, *_) -> None:
        node = self.ctx.centerline_node
        with self.ctx.state:
            self.ctx.state.cl_points = 0 if node is None else node.GetNumberOfDefinedControlPoints()

    def _on_type(self, cl_type, **_) -> None:
        node = self.ctx.centerline_node
        if node is not None and node.IsA(NODE_CLASSES.get(cl_type, "")):
            return
        if node is not None and node.GetNumberOfControlPoints() > 0:
            self.ctx.notify(f"'{cl_type}' takes effect when you clear the centerline", "info")
            return
        self.new_node(cl_type)

    # --- place mode ----------------------------------------------------------------------------
    def on_client_connected(self) -> None:
        self.client_connected = True
        if self.ctx.centerline_node is not None and self.ctx.state.active_effect in (None, "", "none"):
            self.set_placing(True)

    def set_placing(self, on: bool) -> None:
        markups = self.ctx.slicer_app.markups_logic
        if on and self.ctx.centerline_node is not None and not self.ctx.busy:
            self.ctx.emit("placing")
            markups.place_node(self.ctx.centerline_node, True)
        else:
            markups.disable_place_mode()
        self._on_mode()

    def toggle_placing(self) -> None:
        self.set_placing(not self.ctx.state.placing)

    def _on_mode(self, *_) -> None:
        interaction = self.ctx.slicer_app.markups_logic.interaction_node
        with self.ctx.state:
            self.ctx.state.placing = interaction.GetCurrentInteractionMode() == slicer.vtkMRMLInteractionNode.Place

    def clear(self) -> None:
        self.new_node()
        self.ctx.notify("centerline cleared: click in a slice view to place points", "info")

    # --- files ---------------------------------------------------------------------------------
    def load(self) -> None:
        choice = self.ctx.state.cl_load_choice
        try:
            if not choice:
                raise DataPathError("choose a .mrk.json of the data folder first")
            self.load_path(self.ctx.data.existing(choice, (MARKUPS_SUFFIX,)), choice)
        except (DataPathError, SceneIOError) as exc:
            self.ctx.notify(str(exc), "error")

    def load_path(self, path, label: str) -> None:
        node = load_markups(self.ctx.slicer_app, path)
        node.SetName("Centerline")
        self._adopt(node)
        with self.ctx.state:
            self.ctx.state.cl_type = "Curve" if node.IsA("vtkMRMLMarkupsCurveNode") else "Point list"
        self.set_placing(False)
        self.ctx.notify(f"centerline '{label}' loaded: {node.GetNumberOfDefinedControlPoints()} points", "success")

    def save(self) -> None:
        state = self.ctx.state
        try:
            if self.ctx.centerline_node is None or self.ctx.centerline_node.GetNumberOfDefinedControlPoints() == 0:
                raise SceneIOError("the centerline has no points yet")
            path = self.ctx.data.for_writing(state.cl_save_name, MARKUPS_SUFFIX, bool(state.overwrite))
            save_markups(self.ctx.slicer_app, self.ctx.centerline_node, path)
        except (DataPathError, SceneIOError) as exc:
            self.ctx.notify(str(exc), "error")
            return
        self.ctx.emit("saved")
        self.ctx.notify(f"saved '{self.ctx.data.relative(path)}'", "success")

    # --- page ----------------------------------------------------------------------------------
    def build(self) -> None:
        with v3.VCard(variant="flat", classes="mb-2"):
            v3.VCardTitle("Centerline", classes="text-subtitle-1 pb-0")
            with v3.VCardText(classes="pt-1"):
                with html.Div(classes="d-flex align-center"):
                    v3.VSelect(v_model=("cl_type",), items=("cl_types",), density="compact", hide_details=True,
                               id="spd-cl-type", disabled=("running",))
                    html.Span("{{ cl_points }} points", id="spd-cl-points", classes="text-caption ml-2")
                with html.Div(classes="d-flex mt-1"):
                    v3.VBtn("{{ placing ? 'Placing: on' : 'Place points' }}", click=self.toggle_placing,
                            size="small", color=("placing ? 'amber' : undefined",), id="spd-place",
                            disabled=("running",))
                    v3.VBtn("Clear", click=self.clear, size="small", classes="ml-1", id="spd-cl-clear",
                            disabled=("running",))
                html.Div("Placing on: each click in a slice view adds a point. Placing off: drag points to move "
                         "them.", classes="text-caption")
                with html.Div(classes="d-flex align-center mt-1"):
                    v3.VSelect(v_model=("cl_load_choice",), items=("data_markups",), label=".mrk.json",
                               density="compact", hide_details=True, id="spd-cl-load-choice", disabled=("running",))
                    v3.VBtn("Load", click=self.load, size="small", classes="ml-1", id="spd-cl-load",
                            disabled=("running",))
                with html.Div(classes="d-flex align-center mt-1"):
                    v3.VTextField(v_model=("cl_save_name",), label="save as", density="compact", hide_details=True,
                                  id="spd-cl-save-name")
                    v3.VBtn("Save", click=self.save, size="small", classes="ml-1", id="spd-cl-save")
