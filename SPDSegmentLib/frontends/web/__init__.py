"""Browser front end (trame-slicer): ``python -m SPDSegmentLib serve``.

Module map: :mod:`.app` (command line, server start), :mod:`.gateway` (one public port, one session
per browser, forwarding), :mod:`.session` (one trame server + Slicer scene per session),
:mod:`.engine` (the shared model and the worker thread), the panels (:mod:`.volume_panel`,
:mod:`.centerline_panel`, :mod:`.run_panel`, :mod:`.editor_panel`), :mod:`.page` (layout),
:mod:`.data_folder` (the only folder the app touches), :mod:`.scene_io` (files <-> MRML) and
:mod:`.slicer_globals` (``slicer.util`` on a per-session scene). Importing this package imports
neither trame nor VTK.
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from .app import main as app_main

    return app_main(argv)


def serve(port: int = 8080, host: str = "127.0.0.1", data=None, **options) -> int:
    from .app import serve as app_serve

    return app_serve(port, host, data, **options)


__all__ = ["main", "serve"]
