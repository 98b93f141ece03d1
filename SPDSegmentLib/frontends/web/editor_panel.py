"""Editor panel: correct the result with trame-slicer's segment editor (paint, erase, scissors,
islands, undo / redo), then save the segmentation as ``.seg.nrrd`` or download it."""
from __future__ import annotations

import tempfile
from pathlib import Path

from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer.segmentation import (
    BrushDiameterMode,
    ScissorsEffectFillMode,
    SegmentationEffectErase,
    SegmentationEffectIslands,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
    SegmentationIslandsMode,
)
from undo_stack import UndoStack

from .context import SessionContext
from .data_folder import SEGMENTATION_SUFFIX, DataPathError
from .scene_io import SceneIOError, save_segmentation, segment_voxels

EFFECTS = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase,
           "scissors": SegmentationEffectScissors, "islands": SegmentationEffectIslands}
ISLAND_MODES = {"keep largest island": SegmentationIslandsMode.KEEP_LARGEST_ISLAND,
                "remove small islands": SegmentationIslandsMode.REMOVE_SMALL_ISLANDS,
                "keep clicked island": SegmentationIslandsMode.KEEP_SELECTED,
                "remove clicked island": SegmentationIslandsMode.REMOVE_SELECTED}
SCISSORS_MODES = {"erase inside": ScissorsEffectFillMode.ERASE_INSIDE,
                  "erase outside": ScissorsEffectFillMode.ERASE_OUTSIDE,
                  "fill inside": ScissorsEffectFillMode.FILL_INSIDE,
                  "fill outside": ScissorsEffectFillMode.FILL_OUTSIDE}


class EditorPanel:
    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.editor = ctx.slicer_app.segmentation_editor
        self.undo_stack = UndoStack(undo_limit=20)
        self.editor.set_undo_stack(self.undo_stack)
        for signal in (self.undo_stack.can_undo_changed, self.undo_stack.can_redo_changed,
                       self.undo_stack.index_changed):
            signal.connect(lambda *_: self._sync_undo())
        state = ctx.state
        state.active_effect = "none"
        state.brush_size = 5
        state.island_mode = "keep largest island"
        state.island_modes = list(ISLAND_MODES)
        state.island_min_size = 100
        state.scissors_mode = "erase inside"
        state.scissors_modes = list(SCISSORS_MODES)
        state.can_undo = False
        state.can_redo = False
        state.segments = []
        state.seg_save_name = "segmentation.seg.nrrd"
        state.overwrite = False
        state.show_3d_surface = False
        state.change("brush_size")(lambda brush_size, **_: self._apply_brush())
        state.change("island_mode")(lambda **_: self._apply_islands_mode())
        state.change("scissors_mode")(lambda **_: self._apply_scissors_mode())
        state.change("show_3d_surface")(lambda show_3d_surface, **_: self._show_3d(show_3d_surface))
        ctx.on("volume", lambda _node: self._drop_segmentation())
        ctx.on("segmentation", self.adopt)
        ctx.on("placing", lambda: self.set_effect("none"))
        ctx.on("busy", lambda running: running and self.set_effect("none"))

    # --- segmentation --------------------------------------------------------------------------
    def adopt(self, node, segment_id: str) -> None:
        """Edit ``node`` (the run's output) on the current volume, starting with ``segment_id``."""
        if self.editor.active_segmentation_node is not node:
            self.editor.set_active_segmentation(node, self.ctx.volume_node)
        self.editor.set_active_segment_id(segment_id)
        self._show_3d(self.ctx.state.show_3d_surface)
        self._sync_segments()

    def _ensure_segment(self) -> bool:
        """A segment to edit: the active one, or a new empty one in a (new) segmentation."""
        if self.ctx.volume_node is None:
            self.ctx.notify("open a volume first", "warning")
            return False
        if self.ctx.segmentation_node is None:
            node = self.editor.create_empty_segmentation_node()
            node.SetName(f"{self.ctx.volume_node.GetName()} segmentation")
            self.ctx.segmentation_node = node
        if self.editor.active_segmentation_node is not self.ctx.segmentation_node:
            self.editor.set_active_segmentation(self.ctx.segmentation_node, self.ctx.volume_node)
        if not self.editor.get_active_segment_id():
            if self.editor.get_segment_ids():
                self.editor.set_active_segment_id(self.editor.get_segment_ids()[-1])
            else:
                self.editor.add_empty_segment(segment_name="Segment 1")
        self._sync_segments()
        return True

    def _drop_segmentation(self) -> None:
        self.set_effect("none")
        node = self.ctx.segmentation_node
        self.ctx.segmentation_node = None
        self.ctx.remove_node(node)
        self.undo_stack.clear()
        self._sync_segments()

    def select_segment(self, segment_id: str) -> None:
        if self.editor.active_segmentation is not None:
            self.editor.set_active_segment_id(segment_id)
            self._sync_segments()

    # --- effects -------------------------------------------------------------------------------
    def set_effect(self, name: str) -> None:
        if name not in EFFECTS:
            self.editor.deactivate_effect()
            name = "none"
        elif self.ctx.busy:
            self.ctx.notify("a segmentation is running: edit when it has finished", "warning")
            return
        elif self._ensure_segment():
            self.ctx.emit("effect", name)  # ends place mode
            self.editor.set_active_effect_type(EFFECTS[name])
            self._apply_brush()
            self._apply_islands_mode()
            self._apply_scissors_mode()
        else:
            name = "none"
        with self.ctx.state:
            self.ctx.state.active_effect = name

    def _effect(self, effect_type):
        effect = self.editor.active_effect
        return effect if isinstance(effect, effect_type) else None

    def _apply_brush(self) -> None:
        for effect_type in (SegmentationEffectPaint, SegmentationEffectErase):
            effect = self._effect(effect_type)
            if effect is not None:
                effect.set_brush_diameter(float(self.ctx.state.brush_size), BrushDiameterMode.ScreenRelative)

    def _apply_islands_mode(self) -> None:
        effect = self._effect(SegmentationEffectIslands)
        if effect is not None:
            effect.set_island_mode(ISLAND_MODES.get(self.ctx.state.island_mode,
                                                    SegmentationIslandsMode.KEEP_LARGEST_ISLAND))
            effect.set_minimum_island_size(int(self.ctx.state.island_min_size or 0))

    def _apply_scissors_mode(self) -> None:
        effect = self._effect(SegmentationEffectScissors)
        if effect is not None:
            effect.set_fill_mode(SCISSORS_MODES.get(self.ctx.state.scissors_mode, ScissorsEffectFillMode.ERASE_INSIDE))

    def apply_islands(self) -> None:
        effect = self._effect(SegmentationEffectIslands)
        if effect is None:
            return
        self._apply_islands_mode()
        if effect.is_in_interactive_mode():
            self.ctx.notify("click an island in a slice view", "info")
            return
        effect.apply()
        self._sync_segments()

    def undo(self) -> None:
        if self.undo_stack.can_undo():
            self.undo_stack.undo()

    def redo(self) -> None:
        if self.undo_stack.can_redo():
            self.undo_stack.redo()

    def _sync_undo(self) -> None:
        with self.ctx.state:
            self.ctx.state.can_undo = self.undo_stack.can_undo()
            self.ctx.state.can_redo = self.undo_stack.can_redo()

    def _sync_segments(self) -> None:
        node = self.ctx.segmentation_node
        active = self.editor.get_active_segment_id() if self.editor.active_segmentation is not None else ""
        segments = []
        if node is not None:
            seg = node.GetSegmentation()
            for i in range(seg.GetNumberOfSegments()):
                sid = seg.GetNthSegmentID(i)
                segments.append({"id": sid, "name": seg.GetSegment(sid).GetName(), "active": sid == active})
        with self.ctx.state:
            self.ctx.state.segments = segments

    def _show_3d(self, show: bool) -> None:
        if self.editor.active_segmentation is not None:
            self.editor.set_surface_representation_enabled(bool(show))

    # --- files ---------------------------------------------------------------------------------
    def save(self) -> None:
        state = self.ctx.state
        try:
            path = self.ctx.data.for_writing(state.seg_save_name, SEGMENTATION_SUFFIX, bool(state.overwrite))
            save_segmentation(self.ctx.slicer_app, self.ctx.segmentation_node, path)
        except (DataPathError, SceneIOError) as exc:
            self.ctx.notify(str(exc), "error")
            return
        self.ctx.emit("saved")
        self.ctx.notify(f"saved '{self.ctx.data.relative(path)}'", "success")

    def download_bytes(self) -> tuple[str, bytes]:
        """The segmentation as a ``.seg.nrrd`` file's bytes, for the gateway's download route."""
        name = Path(str(self.ctx.state.seg_save_name or "segmentation")).name
        if not name.endswith(SEGMENTATION_SUFFIX):
            name += SEGMENTATION_SUFFIX
        with tempfile.TemporaryDirectory(prefix="spd-download-") as folder:
            path = Path(folder) / "download.seg.nrrd"
            save_segmentation(self.ctx.slicer_app, self.ctx.segmentation_node, path)
            data = path.read_bytes()
        storage = self.ctx.segmentation_node.GetStorageNode()
        if storage is not None:  # the temporary file is gone: do not leave the node pointing at it
            storage.SetFileName("")
        return name, data

    def describe(self) -> list[dict]:
        node = self.ctx.segmentation_node
        if node is None:
            return []
        seg = node.GetSegmentation()
        return [{"id": sid, "name": seg.GetSegment(sid).GetName(), "voxels": segment_voxels(node, sid)}
                for sid in (seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments()))]

    # --- page ----------------------------------------------------------------------------------
    def build(self) -> None:
        with v3.VCard(variant="flat", classes="mb-2"):
            v3.VCardTitle("Edit", classes="text-subtitle-1 pb-0")
            with v3.VCardText(classes="pt-1"):
                with html.Div(classes="d-flex flex-wrap"), html.Span(v_for="s in segments", key="s.id"):
                    v3.VChip("{{ s.name }}", size="small", classes="mr-1 mb-1",
                             color=("s.active ? 'primary' : undefined",), click=(self.select_segment, "[s.id]"))
                with v3.VBtnToggle(model_value=("active_effect",), density="compact", mandatory=True,
                                   divided=True, variant="outlined", id="spd-effects",
                                   disabled=("running",)):
                    v3.VBtn("None", value="none", size="x-small", id="spd-effect-none",
                            click=(self.set_effect, "['none']"))
                    for name in EFFECTS:
                        v3.VBtn(name.capitalize(), value=name, size="x-small", id=f"spd-effect-{name}",
                                click=(self.set_effect, f"['{name}']"))
                v3.VSlider(v_show="active_effect == 'paint' || active_effect == 'erase'", v_model=("brush_size",),
                           min=1, max=30, step=1, label="brush %", density="compact", hide_details=True,
                           thumb_label=True, classes="mt-1")
                v3.VSelect(v_show="active_effect == 'scissors'", v_model=("scissors_mode",),
                           items=("scissors_modes",), density="compact", hide_details=True, classes="mt-1",
                           id="spd-scissors-mode")
                with html.Div(v_show="active_effect == 'islands'", classes="mt-1"):
                    v3.VSelect(v_model=("island_mode",), items=("island_modes",), density="compact",
                               hide_details=True, id="spd-island-mode")
                    with html.Div(classes="d-flex align-center"):
                        v3.VTextField(v_model_number=("island_min_size",), type="number", label="min voxels",
                                      density="compact", hide_details=True)
                        v3.VBtn("Apply", click=self.apply_islands, size="small", classes="ml-1",
                                id="spd-islands-apply")
                with html.Div(classes="d-flex mt-1"):
                    v3.VBtn("Undo", click=self.undo, size="small", disabled=("!can_undo",), id="spd-undo")
                    v3.VBtn("Redo", click=self.redo, size="small", classes="ml-1", disabled=("!can_redo",),
                            id="spd-redo")
                v3.VSwitch(v_model=("show_3d_surface",), label="3-D surface", density="compact",
                           hide_details=True, color="primary", id="spd-show-3d")
                with html.Div(classes="d-flex align-center mt-1"):
                    v3.VTextField(v_model=("seg_save_name",), label="save as", density="compact",
                                  hide_details=True, id="spd-seg-save-name")
                    v3.VBtn("Save", click=self.save, size="small", classes="ml-1", id="spd-seg-save",
                            disabled=("!segments.length",))
                with html.Div(classes="d-flex align-center"):
                    v3.VCheckbox(v_model=("overwrite",), label="overwrite", density="compact", hide_details=True)
                    v3.VBtn("Download", href="download/segmentation.seg.nrrd", size="small", id="spd-seg-download",
                            disabled=("!segments.length",))  # an attachment: the page stays
