"""Volume panel: open a volume from the data folder or an upload, show it, set window/level."""
from __future__ import annotations

import asyncio
from pathlib import Path

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from .context import SessionContext
from .data_folder import DataPathError
from .scene_io import SceneIOError, load_volume, volume_files

# (title, window, level); None = the display node's automatic window/level
WINDOW_PRESETS: dict[str, tuple[float, float] | None] = {
    "Auto": None,
    "CT vessels (CTA)": (700.0, 200.0),
    "CT abdomen": (350.0, 40.0),
    "CT lung": (1400.0, -500.0),
    "CT bone": (1000.0, 400.0),
    "CT brain": (100.0, 50.0),
}


class VolumePanel:
    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        state = ctx.state
        state.volume_choice = None
        state.volume_name = ""
        state.wl_preset = "Auto"
        state.wl_presets = list(WINDOW_PRESETS)
        state.upload_busy = False
        state.max_upload_bytes = ctx.limits.max_upload_bytes
        state.max_upload_mb = round(ctx.limits.max_upload_bytes / 2**20, 1)
        state.change("wl_preset")(self._on_preset)
        self._unfitted: dict[str, tuple[int, int]] = {}  # view -> size when the volume was shown
        for view in ctx.slicer_app.view_manager.get_slice_views():
            view.get_view_node().AddObserver("ModifiedEvent", lambda node, _e, v=view: self._fit_if_resized(v, node))
        self.refresh_entries()

    # --- data folder ---------------------------------------------------------------------------
    def refresh_entries(self) -> None:
        entries = self.ctx.data.entries()
        with self.ctx.state:
            self.ctx.state.data_volumes = [e.relative + ("/ (DICOM)" if e.kind == "dicom" else "")
                                           for e in entries if e.kind in ("volume", "dicom")]
            self.ctx.state.data_markups = [e.relative for e in entries if e.kind == "markups"]

    def open_choice(self) -> None:
        choice = self.ctx.state.volume_choice
        if not choice:
            self.ctx.notify("choose a volume of the data folder first", "warning")
            return
        try:
            path = self.ctx.data.existing(choice.removesuffix("/ (DICOM)"))
            self.open_path(path, choice)
        except (DataPathError, SceneIOError) as exc:
            self.ctx.notify(str(exc), "error")

    def open_path(self, path: Path, label: str) -> None:
        """Load a volume file or DICOM folder that the server chose or resolved under the data folder."""
        self._refuse_if_busy()
        self.show(load_volume(self.ctx.slicer_app, volume_files(path), label), label)

    def open_upload(self, files: list[Path]) -> str:
        """Files received by the gateway (already size-checked, in a temporary folder)."""
        self._refuse_if_busy()
        label = files[0].name if len(files) == 1 else f"{len(files)} uploaded files"
        node = load_volume(self.ctx.slicer_app, [str(f) for f in files], label)
        self.show(node, label)
        return f"loaded '{node.GetName()}'"

    # --- display -------------------------------------------------------------------------------
    def _refuse_if_busy(self) -> None:
        if self.ctx.busy:
            raise SceneIOError("a segmentation is running: wait or cancel it before opening another volume")

    def show(self, node, label: str) -> None:
        name = node.GetName().removeprefix("None: ")  # DICOM series without a series number
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
            name = name.removesuffix(suffix)
        node.SetName(name or "volume")
        previous = self.ctx.volume_node
        self.ctx.volume_node = node
        node.CreateDefaultDisplayNodes()
        app = self.ctx.slicer_app
        app.display_manager.show_volume_in_slice_background(node)
        app.display_manager.show_volume_in_slice_foreground(None)
        for view in app.view_manager.get_slice_views():
            view.set_visible_in_3d(True)
        self.apply_window(self.ctx.state.wl_preset)
        app.display_manager.reset_views()
        self._unfitted = {v.get_singleton_tag(): tuple(v.get_view_node().GetDimensions()[:2])
                          for v in app.view_manager.get_slice_views()}
        self.ctx.emit("volume", node)  # panels drop their nodes of the previous volume
        if previous is not None and previous is not node:
            self.ctx.remove_node(previous)
        with self.ctx.state:
            self.ctx.state.volume_name = node.GetName()
        self.ctx.notify(f"opened '{label}'", "success")

    def _fit_if_resized(self, view, node) -> None:
        """Fit the volume again once a view got its size in the page (views start at 300 x 300)."""
        size = self._unfitted.get(view.get_singleton_tag())
        if size is not None and tuple(node.GetDimensions()[:2]) != size:
            del self._unfitted[view.get_singleton_tag()]
            # after the resize that is running now has finished (it sets the field of view last)
            asyncio.get_event_loop().call_soon(view.fit_view_to_content)

    @property
    def views_fitted(self) -> bool:
        return not self._unfitted or all(size != (300, 300) for size in self._unfitted.values())

    def apply_window(self, preset: str) -> None:
        node = self.ctx.volume_node
        if node is None or node.GetDisplayNode() is None:
            return
        display = node.GetDisplayNode()
        values = WINDOW_PRESETS.get(preset)
        if values is None:
            display.AutoWindowLevelOn()
        else:
            display.AutoWindowLevelOff()
            display.SetWindowLevel(*values)

    def _on_preset(self, wl_preset, **_) -> None:
        self.apply_window(wl_preset)

    # --- page ----------------------------------------------------------------------------------
    def build(self) -> None:
        with v3.VCard(variant="flat", classes="mb-2"):
            v3.VCardTitle("Volume", classes="text-subtitle-1 pb-0")
            with v3.VCardText(classes="pt-1"):
                html.Div("{{ volume_name || 'no volume' }}", id="spd-volume-name", classes="text-caption mb-1")
                with html.Div(classes="d-flex align-center"):
                    v3.VSelect(v_model=("volume_choice",), items=("data_volumes",), label="data folder",
                               density="compact", hide_details=True, id="spd-volume-choice",
                               disabled=("running",))
                    v3.VBtn("Open", click=self.open_choice, size="small", classes="ml-1", id="spd-volume-open",
                            disabled=("running || !volume_choice",))
                for label, directory, ident in (("upload files", False, "spd-upload-files"),
                                                ("upload a DICOM folder", True, "spd-upload-dir")):
                    v3.VFileInput(
                        label=label, density="compact", hide_details=True, multiple=True,
                        prepend_icon="mdi-folder-upload" if directory else "mdi-file-upload",
                        id=ident, disabled=("running || upload_busy",), classes="mt-1",
                        raw_attrs=["webkitdirectory"] if directory else [],
                        change=("upload_busy = true; window.spdUpload($event.target.files, max_upload_bytes)"
                                ".then(r => { message = r.message; message_type = r.ok ? 'success' : 'error'; })"
                                ".finally(() => { upload_busy = false; });"),
                    )
                html.Div("up to {{ max_upload_mb }} MB: NRRD, NIfTI, MetaImage, DICOM files; or a .mrk.json centerline",
                         classes="text-caption")
                v3.VSelect(v_model=("wl_preset",), items=("wl_presets",), label="window / level",
                           density="compact", hide_details=True, classes="mt-2", id="spd-wl-preset")
