"""Run panel: method, prior, tau, window, gap filling and the solid-organ window; Run with a progress bar and
Cancel; review of the result (kept / rejected / borrowed prompts as coloured markups, the saliency overlay, the
warnings)."""
from __future__ import annotations

import asyncio
import logging
import time

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from ...method.cpd import MODES
from ...method.pipeline import SegmentParams
from ...method.windowing import PRESETS
from ..mrml_logic import PROMPT_COLORS, ProcessOutput, SPDInputError
from .context import SessionContext
from .engine import RunHandle, RunRequest, SessionLogic, start_run

log = logging.getLogger(__name__)

TRAINING_FREE_PRIORS = ("sam-track", "sam-track-gated", "sam-track-ungated", "sam-votes", "intensity")
SALIENCY_OPACITY = 0.5
SALIENCY_COLORS = "vtkMRMLColorTableNodeWarm1"  # yellow (low) -> orange -> red (high)
THICK_CONTEXT = 3  # the "solid organ" box: CPD's window where the structure is thick (the measured setting)


_THICK_HELP = (f"Where the structure is {SegmentParams.thick_radius_mm:g} mm or more in radius at the points, each "
               f"slice borrows points from {THICK_CONTEXT} slices per side instead of {SegmentParams.context}. Off "
               "by default: on the sample cases it gained solid organs up to 11 Dice points and cost a colon "
               "and an MR kidney up to 8.")


def _prior_choices() -> list[str]:
    from ...method.saliency import shipped_priors

    return [*TRAINING_FREE_PRIORS, *shipped_priors()]


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


class RunPanel:
    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.logic = SessionLogic(ctx.slicer_app, ctx.engine, asyncio.get_event_loop())
        self.handle: RunHandle | None = None
        self.output: ProcessOutput | None = None
        state = ctx.state
        state.method = "spd"
        state.methods = list(MODES)
        state.prior = "sam-track"
        state.priors = _prior_choices()
        state.tau_auto = True
        state.tau = 0.5
        state.intensity_preset = "auto"
        state.propagate = True
        state.thick_window = False
        state.intensity_presets = list(PRESETS)
        state.running = False
        state.progress = 0
        state.progress_msg = ""
        state.run_result = None
        state.run_warnings = []
        state.show_saliency = False
        state.show_prompts = True
        state.prompt_legend = [{"status": s, "color": _hex(c), "count": 0} for s, c in PROMPT_COLORS.items()
                               if s in ("kept", "rejected", "borrowed")]
        state.change("show_saliency")(lambda show_saliency, **_: self._show_saliency(show_saliency))
        state.change("show_prompts")(lambda show_prompts, **_: self._show_prompts(show_prompts))
        ctx.on("volume", lambda _node: self._forget_output())

    # --- run -----------------------------------------------------------------------------------
    def run(self) -> None:
        ctx, state = self.ctx, self.ctx.state
        if state.running:
            return
        if ctx.volume_node is None:
            ctx.notify("open a volume first", "warning")
            return
        request = RunRequest(volume_node=ctx.volume_node, centerline_node=ctx.centerline_node,
                             segmentation_node=ctx.segmentation_node, segment_name="SPD", method=state.method,
                             prior=state.prior, tau=None if state.tau_auto else float(state.tau),
                             intensity_preset=state.intensity_preset, propagate=bool(state.propagate),
                             thick_context=THICK_CONTEXT if state.thick_window else None,
                             device=ctx.engine.device)
        handle = RunHandle(asyncio.get_event_loop(), self._progress)
        queued = ctx.engine.busy
        try:
            future = start_run(ctx.engine, self.logic, request, handle)
        except SPDInputError as exc:
            ctx.notify(str(exc), "error")
            return
        self.handle = handle
        ctx.emit("busy", True)
        with state:
            state.running = True
            state.progress = 0
            state.progress_msg = "waiting for another session's run to finish" if queued else "starting"
            state.message = ""
        asyncio.ensure_future(self._finish(future, time.perf_counter()))

    def cancel(self) -> None:
        if self.handle is not None and self.ctx.state.running:
            self.handle.cancel()
            with self.ctx.state:
                self.ctx.state.progress_msg = "cancelling..."

    def _progress(self, fraction: float, message: str) -> None:
        if not self.ctx.state.running:
            return
        with self.ctx.state:
            self.ctx.state.progress = round(100 * fraction)
            if not (self.handle and self.handle.cancelled):
                self.ctx.state.progress_msg = message

    async def _finish(self, future: asyncio.Future, started: float) -> None:
        from ...method.pipeline import Cancelled

        ctx = self.ctx
        try:
            output = await future
            self._adopt(output, time.perf_counter() - started)
        except Cancelled:
            ctx.notify("cancelled: nothing was added to the scene", "info")
        except ValueError as exc:  # SPDInputError and the engine's own input errors carry a message for the user
            ctx.notify(str(exc), "error")
        except Exception as exc:  # any engine failure is reported in the page
            log.exception("SPD run failed")
            ctx.notify(f"the run failed: {type(exc).__name__}: {exc}", "error")
        finally:
            self.handle = None
            with ctx.state:
                ctx.state.running = False
                ctx.state.progress_msg = ""
            ctx.emit("busy", False)

    # --- review --------------------------------------------------------------------------------
    def _adopt(self, output: ProcessOutput, seconds: float) -> None:
        ctx, state = self.ctx, self.ctx.state
        self._forget_output()
        self.output = output
        ctx.segmentation_node = output.segmentationNode
        segment = output.segmentationNode.GetSegmentation().GetSegment(output.segmentId)
        counts = output.summary.get("counts", {})
        ctx.emit("segmentation", output.segmentationNode, output.segmentId)
        self._style_saliency(output.saliencyNode)
        self._show_saliency(state.show_saliency)
        self._show_prompts(state.show_prompts)
        with state:
            state.run_result = {"segment": segment.GetName() if segment else output.segmentId,
                                "slices": output.summary.get("processed_slices", 0),
                                "tau": round(float(output.summary.get("tau", 0.0)), 3),
                                "seconds": round(seconds, 1)}
            state.run_warnings = list(output.warnings)
            state.prompt_legend = [{**item, "count": int(counts.get(item["status"], 0))}
                                   for item in state.prompt_legend]
            state.progress = 100
        kind = "warning" if output.warnings else "success"
        ctx.notify(f"segment '{state.run_result['segment']}' added" +
                   (f" - {len(output.warnings)} warning(s), see below" if output.warnings else ""), kind)

    def _forget_output(self) -> None:
        """Drop the previous run's review nodes (prompts, saliency); its segment stays."""
        if self.output is None:
            return
        self.ctx.slicer_app.display_manager.show_volume_in_slice_foreground(None)
        for node in [*self.output.promptNodes.values(), self.output.saliencyNode]:
            self.ctx.remove_node(node)
        self.output = None
        with self.ctx.state:
            self.ctx.state.run_warnings = []

    def _style_saliency(self, node) -> None:
        if node is None or node.GetDisplayNode() is None:
            return
        display = node.GetDisplayNode()
        color = self.ctx.scene.GetNodeByID(SALIENCY_COLORS)
        if color is not None:
            display.SetAndObserveColorNodeID(color.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevel(1.0, 0.5)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(0.1)  # no colour where the prior sees (almost) nothing
        display.SetUpperThreshold(1.0)

    def _show_saliency(self, show: bool) -> None:
        app = self.ctx.slicer_app
        node = self.output.saliencyNode if self.output else None
        app.display_manager.show_volume_in_slice_foreground(node if show and node is not None else None)
        for view in app.view_manager.get_slice_views():
            view.set_foreground_opacity(SALIENCY_OPACITY)

    def _show_prompts(self, show: bool) -> None:
        if self.output is None:
            return
        for node in self.output.promptNodes.values():
            node.SetDisplayVisibility(bool(show))

    # --- page ----------------------------------------------------------------------------------
    def build(self) -> None:
        with v3.VCard(variant="flat", classes="mb-2"):
            v3.VCardTitle("Segment (SPD)", classes="text-subtitle-1 pb-0")
            with v3.VCardText(classes="pt-1"):
                with html.Div(classes="d-flex"):
                    v3.VSelect(v_model=("method",), items=("methods",), label="method", density="compact",
                               hide_details=True, id="spd-method", disabled=("running",), classes="mr-1")
                    v3.VSelect(v_model=("prior",), items=("priors",), label="prior", density="compact",
                               hide_details=True, id="spd-prior", disabled=("running",))
                with html.Div(classes="d-flex align-center"):
                    v3.VCheckbox(v_model=("tau_auto",), label="prior's tau", density="compact", hide_details=True,
                                 id="spd-tau-auto", disabled=("running",))
                    v3.VSlider(v_model=("tau",), min=0.0, max=0.95, step=0.05, density="compact",
                               hide_details=True, disabled=("running || tau_auto",), id="spd-tau",
                               thumb_label=True, classes="ml-2")
                v3.VSelect(v_model=("intensity_preset",), items=("intensity_presets",), label="intensity window",
                           density="compact", hide_details=True, id="spd-preset", disabled=("running",))
                v3.VCheckbox(v_model=("propagate",), label="fill gaps with the tracked structure", density="compact",
                             hide_details=True, id="spd-propagate", disabled=("running || method == 'raw'",))
                v3.VCheckbox(v_model=("thick_window",), label=f"solid organ: borrow from {THICK_CONTEXT} slices "
                             "where thick", density="compact", hide_details=True, id="spd-thick",
                             disabled=("running || method != 'spd'",), title=_THICK_HELP)
                with html.Div(classes="d-flex mt-2"):
                    v3.VBtn("Run", click=self.run, color="primary", size="small", id="spd-run",
                            disabled=("running || !volume_name || cl_points < 1",))
                    v3.VBtn("Cancel", click=self.cancel, size="small", classes="ml-1", id="spd-cancel",
                            disabled=("!running",))
                v3.VProgressLinear(model_value=("progress",), height=6, classes="mt-2", id="spd-progress",
                                   color="primary", v_show="running")
                html.Div("{{ progress_msg }}", v_show="running", id="spd-progress-msg", classes="text-caption")
                with html.Div(v_if="run_result", id="spd-run-result", classes="text-caption mt-1"):
                    html.Div("{{ run_result.segment }}: {{ run_result.slices }} slices, tau "
                             "{{ run_result.tau }}, {{ run_result.seconds }} s")
                    with html.Div(classes="d-flex flex-wrap"), \
                            html.Span(v_for="item in prompt_legend", key="item.status", classes="mr-2"):
                        html.Span("\u25CF", style=("{color: item.color}",))
                        html.Span(" {{ item.status }} {{ item.count }}")
                v3.VAlert(v_for="(w, i) in run_warnings", key="i", text=("w",), type="warning",
                          density="compact", variant="tonal", classes="mt-1 text-caption",
                          id="spd-run-warning")
                with html.Div(classes="d-flex"):
                    v3.VSwitch(v_model=("show_prompts",), label="prompts", density="compact", hide_details=True,
                               color="primary", id="spd-show-prompts", classes="mr-2")
                    v3.VSwitch(v_model=("show_saliency",), label="saliency", density="compact", hide_details=True,
                               color="primary", id="spd-show-saliency")
