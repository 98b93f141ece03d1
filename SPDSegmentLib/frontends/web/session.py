"""One browser session: its own trame server (so its own state), its own trame-slicer ``SlicerApp``
(so its own MRML scene, views and segment editor) and the panels that drive them.

trame serves one state per server and shares it between every page connected to that server, so
isolation needs one server per session. Sessions live in the same process and on the same event loop
(see :mod:`.gateway`), which lets them share the loaded SAM model and the engine's worker thread.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .centerline_panel import CenterlinePanel
from .context import Limits, SessionContext
from .data_folder import DataFolder
from .editor_panel import EditorPanel
from .engine import SharedEngine
from .page import build_page, enable_static
from .run_panel import RunPanel
from .scene_io import SceneIOError
from .volume_panel import VolumePanel

log = logging.getLogger(__name__)


def _matrix(vtk_matrix) -> list[list[float]]:
    return [[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)]


class WebSession:
    """Everything one browser session owns; the gateway creates it, starts it and stops it."""

    def __init__(self, token: str, data: DataFolder, engine: SharedEngine, limits: Limits,
                 initial_volume: tuple[Path, str] | None = None) -> None:
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.token = token
        self.server_name = f"spdsegment-{token}"
        self.server = get_server(self.server_name, client_type="vue3")
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout("Axial Primary")

        self.ctx = SessionContext(self.server, self.slicer_app, data, engine, limits)
        state = self.server.state
        state.trame__title = "SPDSegment"
        state.message = ""
        state.message_type = "info"
        state.data_root = str(data.root)
        self.volume = VolumePanel(self.ctx)
        self.centerline = CenterlinePanel(self.ctx)
        self.run = RunPanel(self.ctx)
        self.editor = EditorPanel(self.ctx)
        self.ctx.on("saved", self.volume.refresh_entries)
        enable_static(self.server)
        build_page(self.server, self.layout_manager, [self.volume, self.centerline, self.run, self.editor])
        self.server.controller.on_client_connected.add(self.centerline.on_client_connected)
        if initial_volume is not None:
            try:
                self.volume.open_path(*initial_volume)
            except SceneIOError as exc:
                self.ctx.notify(str(exc), "error")
        if self.ctx.centerline_node is None:
            self.centerline.new_node()

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self) -> int:
        """Serve this session's page on a free port of 127.0.0.1 (reached only through the gateway)."""
        self.server.start(exec_mode="task", port=0, host="127.0.0.1", thread=True, open_browser=False,
                          show_connection_info=False, disable_logging=True, timeout=0)
        await self.server.ready
        return self.server.port

    async def stop(self) -> None:
        from trame.app.core import AVAILABLE_SERVERS

        self.run.logic.closed = True
        if self.run.handle is not None:
            self.run.handle.cancel()
        try:
            await self.server.stop()
        except Exception:  # closing must go on
            log.exception("stopping session %s", self.token)
        AVAILABLE_SERVERS.pop(self.server_name, None)
        self._release_slicer()

    def _release_slicer(self) -> None:
        """Undo what a SlicerApp registers process-wide, then free its views and scene."""
        import slicer

        creator = getattr(self.slicer_app.segmentation_editor, "_pipeline_creator", None)
        factory = slicer.vtkMRMLLayerDMPipelineFactory.GetInstance()
        if creator is not None and factory.ContainsPipelineCreator(creator):
            factory.RemovePipelineCreator(creator)
        for view in self.slicer_app.view_manager.get_views():
            view.set_render_blocked(True)
        self.slicer_app.scene.Clear(True)

    # --- gateway hooks -------------------------------------------------------------------------
    def receive_upload(self, files: list[Path]) -> str:
        """Files the gateway received for this page: a ``.mrk.json`` centerline or a volume."""
        if len(files) == 1 and files[0].name.lower().endswith(".mrk.json"):
            self.centerline.load_path(files[0], files[0].name)
            return f"centerline '{files[0].name}' loaded"
        message = self.volume.open_upload(files)
        return message

    def download_segmentation(self) -> tuple[str, bytes]:
        return self.editor.download_bytes()

    def describe(self) -> dict:
        """What the session's scene holds, as plain JSON (for scripts and the tests)."""
        import vtk

        ctx = self.ctx
        volume = None
        if ctx.volume_node is not None:
            m = vtk.vtkMatrix4x4()
            ctx.volume_node.GetIJKToRASMatrix(m)
            display = ctx.volume_node.GetDisplayNode()
            window_level = [round(display.GetWindow(), 3), round(display.GetLevel(), 3)] if display else None
            volume = {"id": ctx.volume_node.GetID(), "name": ctx.volume_node.GetName(),
                      "dimensions": list(ctx.volume_node.GetImageData().GetDimensions()), "ijk_to_ras": _matrix(m),
                      "window_level": window_level}
        centerline = None
        if ctx.centerline_node is not None:
            node = ctx.centerline_node
            points = [list(node.GetNthControlPointPositionWorld(i)) for i in range(node.GetNumberOfControlPoints())]
            centerline = {"id": node.GetID(), "class": node.GetClassName(), "points": points}
        prompts, run_params = {}, None
        if self.run.output is not None:
            prompts = {status: node.GetNumberOfControlPoints() for status, node in self.run.output.promptNodes.items()}
            run_params = self.run.output.summary.get("params")
        views = {}
        for view in self.slicer_app.view_manager.get_slice_views():
            node = view.get_view_node()
            views[view.get_singleton_tag()] = {"xy_to_ras": _matrix(node.GetXYToRAS()),
                                               "dimensions": list(node.GetDimensions()),
                                               "orientation": node.GetOrientation()}
        nodes = []
        for i in range(ctx.scene.GetNumberOfNodes()):
            node = ctx.scene.GetNthNode(i)
            if node.IsA("vtkMRMLDisplayableNode") and not node.GetHideFromEditors():
                nodes.append({"id": node.GetID(), "class": node.GetClassName(), "name": node.GetName()})
        state = self.server.state
        return {"token": self.token, "volume": volume, "centerline": centerline,
                "segmentation": None if ctx.segmentation_node is None else ctx.segmentation_node.GetID(),
                "segments": self.editor.describe(), "prompts": prompts, "run_params": run_params,
                "saliency": bool(self.run.output and self.run.output.saliencyNode is not None),
                "views": views, "nodes": nodes, "running": bool(state.running),
                "progress": state.progress, "message": state.message, "message_type": state.message_type,
                "active_effect": state.active_effect, "placing": bool(state.placing),
                "model_loads": ctx.engine.loads, "undo": bool(state.can_undo),
                "views_fitted": self.volume.views_fitted}
