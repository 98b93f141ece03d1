"""What the panels of one browser session share: its trame server, its Slicer app and scene, the
data folder, the process-wide engine, and the session's current nodes.

Each panel (volume, centerline, run, editor) reads and writes the nodes here instead of searching
the scene, so the panels agree on "the" volume, centerline and segmentation without knowing each other.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .data_folder import DataFolder
from .engine import SharedEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Server-wide limits, set on the command line."""

    max_upload_bytes: int = 512 * 1024 * 1024
    max_sessions: int = 8
    idle_seconds: float = 600.0


@dataclass
class SessionContext:
    server: Any  # trame_server.Server of this session only
    slicer_app: Any  # trame_slicer.core.SlicerApp of this session only
    data: DataFolder
    engine: SharedEngine
    limits: Limits
    volume_node: Any = None
    centerline_node: Any = None
    segmentation_node: Any = None
    listeners: dict[str, list] = field(default_factory=dict)

    @property
    def state(self):
        return self.server.state

    @property
    def scene(self):
        return self.slicer_app.scene

    def notify(self, text: str, kind: str = "info") -> None:
        """Show ``text`` in the page's message bar (kind: success, info, warning, error)."""
        if kind == "error":
            log.warning("session message: %s", text)
        with self.state:
            self.state.message = text
            self.state.message_type = kind

    def on(self, event: str, callback) -> None:
        """Subscribe to a session event ('volume', 'busy', 'segmentation')."""
        self.listeners.setdefault(event, []).append(callback)

    def emit(self, event: str, *args) -> None:
        for callback in self.listeners.get(event, []):
            callback(*args)

    @property
    def busy(self) -> bool:
        return bool(self.state.running)

    def remove_node(self, node) -> None:
        if node is not None and self.scene.GetNodeByID(node.GetID()) is node:
            self.scene.RemoveNode(node)
