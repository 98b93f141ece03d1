"""Run the SPD engine for browser sessions: one model per server process, one run at a time.

The MRML <-> engine code is :class:`~SPDSegmentLib.frontends.mrml_logic.SPDSegmentMRMLLogic`; this
module only decides *where* its parts run. VTK/MRML objects are not thread-safe and trame renders on
the event-loop thread, so:

* the inputs are read from the scene on the loop thread before the run (a snapshot),
* the engine (SAM, saliency, CPD) runs on a single worker thread shared by all sessions, so the
  loaded model is used by one run at a time and the page stays responsive,
* the results are written into the scene back on the loop thread, with ``slicer.mrmlScene`` /
  ``slicer.modules`` pointing at that session's scene (see :mod:`.slicer_globals`).

A cancelled, refused or failed run therefore leaves the scene exactly as it was, as the logic promises.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..mrml_logic import ProcessOutput, SPDSegmentMRMLLogic
from .slicer_globals import session_globals

log = logging.getLogger(__name__)


def preload_native_libraries() -> None:
    """Import torch (and triton, when installed) before the first view renders.

    Mesa's software OpenGL (llvmpipe, used by EGL off screen) loads its own LLVM; triton's
    ``libtriton.so`` carries another. Loaded in the order Mesa-then-triton, the process crashes with a
    segmentation fault at the first run (tried on this stack: torch 2.14, Mesa EGL, vtk 9.6). Loaded
    triton-first, both work. torch pulls triton in lazily (``torch._dynamo``), so do it up front.
    """
    import importlib.util

    import torch  # noqa: F401
    import torchvision  # noqa: F401

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


class SharedEngine:
    """The process-wide SAM backend (loaded at the first run) and the one worker thread."""

    def __init__(self, device: str = "auto", runtime: str = "auto") -> None:
        self.device = device
        self.runtime = runtime
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spd-engine")
        self._backends: dict[tuple, Any] = {}
        self._load_lock = threading.Lock()  # held while a model loads (worker thread only)
        self._count_lock = threading.Lock()  # never held long: the loop thread takes it too
        self._pending = 0
        self.loads = 0  # how many times a model was loaded (kept for the page and the tests)

    def backend(self, name: str, checkpoint: str | None, device: str, cache) -> Any:
        """Injected as the logic's ``backend_loader``: every session gets the same loaded model."""
        key = (name, checkpoint or "", device)
        with self._load_lock:
            if key not in self._backends:
                from ...sam.backend import load_backend

                log.info("loading SAM backend %s on %s (once per server process)", name, device)
                self._backends[key] = load_backend(name, checkpoint, device, cache, runtime=self.runtime)
                self.loads += 1
            return self._backends[key]

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        with self._count_lock:
            self._pending += 1

        def run() -> Any:
            try:
                return fn()
            finally:
                with self._count_lock:
                    self._pending -= 1

        return self._executor.submit(run)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class SessionLogic(SPDSegmentMRMLLogic):
    """The MRML logic of one session, split across threads as the module docstring explains.

    ``process`` is called on the worker thread. Its two reads of the scene (``volumeFromNode``,
    ``centerlineFromNode``) return the snapshot taken on the loop thread by :meth:`snapshot`, and its
    two writes (``_writeResults``, ``_updateResults``) are sent to the loop thread and awaited.
    """

    def __init__(self, slicer_app, engine: SharedEngine, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(scene=slicer_app.scene, backend_loader=engine.backend)
        self._slicer_app = slicer_app
        self._loop = loop
        self._snapshots: dict[str, Any] = {}
        self.closed = False  # set when the session ends: a run still going must not write any more

    def snapshot(self, volume_node, centerline_node) -> None:
        """Read the inputs now (loop thread); raises SPDInputError with a message for the page."""
        volume = SPDSegmentMRMLLogic.volumeFromNode(volume_node)  # checks None and kinds first
        centerline = SPDSegmentMRMLLogic.centerlineFromNode(centerline_node)
        self._snapshots = {volume_node.GetID(): volume, centerline_node.GetID(): centerline}

    def volumeFromNode(self, volumeNode):  # the base class's names (Slicer style)
        snapshot = self._snapshots.get(volumeNode.GetID())
        return snapshot if snapshot is not None else SPDSegmentMRMLLogic.volumeFromNode(volumeNode)

    def centerlineFromNode(self, markupsNode):
        snapshot = self._snapshots.get(markupsNode.GetID())
        return snapshot if snapshot is not None else SPDSegmentMRMLLogic.centerlineFromNode(markupsNode)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the loop thread with this session's slicer globals, wait for its result."""
        if _running_loop() is self._loop:  # already on the loop thread
            with session_globals(self._slicer_app):
                return fn()
        done: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            try:
                if self.closed:
                    from ...method.pipeline import Cancelled

                    raise Cancelled("the session ended during the run")
                with session_globals(self._slicer_app):
                    done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed back to the worker thread as is
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        while True:  # never wait forever on a loop that is shutting down
            try:
                return done.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if self._loop.is_closed() or not self._loop.is_running():
                    from ...method.pipeline import Cancelled

                    raise Cancelled("the server stopped during the run") from None

    def _writeResults(self, *args, **kwargs):
        write = super()._writeResults
        return self.on_loop(lambda: write(*args, **kwargs))

    def _updateResults(self, *args, **kwargs):
        update = super()._updateResults
        return self.on_loop(lambda: update(*args, **kwargs))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass
class RunRequest:
    """What the page asked for; the names follow ``SPDSegmentMRMLLogic.process``."""

    volume_node: Any
    centerline_node: Any
    segmentation_node: Any
    segment_name: str = "SPD"
    method: str = "spd"
    prior: str | None = None
    tau: float | None = None
    intensity_preset: str = "auto"
    propagate: bool = True
    thick_context: int | None = None  # CPD's wider window where the structure is thick (None: off)
    device: str = "auto"
    extra: dict = field(default_factory=dict)


class RunHandle:
    """One run: a cancel flag the page sets, progress the worker reports, the future of its output."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_progress: Callable[[float, str], None]) -> None:
        self._loop = loop
        self._on_progress = on_progress
        self._cancel = threading.Event()
        self.future: concurrent.futures.Future | None = None

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def progress(self, fraction: float, message: str) -> None:
        """Called on the worker thread: hand the numbers to the loop thread (state updates live there)."""
        self._loop.call_soon_threadsafe(self._on_progress, float(fraction), str(message))


def start_run(engine: SharedEngine, logic: SessionLogic, request: RunRequest,
              handle: RunHandle) -> asyncio.Future:
    """Snapshot the inputs (may raise SPDInputError at once), queue the run, return an awaitable output."""
    logic.snapshot(request.volume_node, request.centerline_node)

    def work() -> ProcessOutput:
        if handle.cancelled:
            from ...method.pipeline import Cancelled

            raise Cancelled("segmentation cancelled by the user")
        handle.progress(0.0, "loading the model" if not engine.loads else "starting")
        return logic.process(request.volume_node, request.centerline_node, request.segmentation_node,
                             segmentName=request.segment_name, method=request.method, prior=request.prior,
                             tau=request.tau, intensityPreset=request.intensity_preset, propagate=request.propagate,
                             thickContext=request.thick_context, device=request.device,
                             showSaliency=True, showPrompts=True, progress=handle.progress,
                             cancel=lambda: handle.cancelled, **request.extra)

    handle.future = engine.submit(work)
    return asyncio.wrap_future(handle.future)
