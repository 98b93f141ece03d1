"""``python -m SPDSegmentLib serve``: the browser app (trame-slicer), one scene per browser session.

    python -m SPDSegmentLib serve [--port 8080] [--host 127.0.0.1] [--data DIR]

Opens on 127.0.0.1 only unless told otherwise. Files are read and written only inside the data
folder (``--data``; default ``~/.cache/spdsegment/web``); uploads are limited in size. With no
volume in the data folder the page opens the bundled real chest CTA sample.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("SPDSegmentLib.web")
DEFAULT_DATA = Path.home() / ".cache" / "spdsegment" / "web"


def configure_environment() -> None:
    """Before trame / VTK are imported: render off screen, and keep trame off our command line."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no X display needed (Mesa EGL)
    os.environ["TRAME_ARGS"] = ""  # trame would otherwise parse sys.argv (--host, --port) for every session
    os.environ.setdefault("WSLINK_READY_MSG", "")  # wslink prints a banner per session server otherwise


def _initial_volume(data, sample: bool) -> tuple[Path, str] | None:
    first = data.first_volume()
    if first is not None:
        return first, data.relative(first)
    if not sample:
        return None
    from ...evaluation import sample_data

    if not sample_data.is_fetched():
        log.warning("no volume in the data folder and no sample data (python -m SPDSegmentLib fetch-data)")
        return None
    return Path(sample_data.path("cta/image.nii.gz")), "sample: chest CTA (TotalSegmentator test data)"


async def run_server(port: int = 8080, host: str = "127.0.0.1", data: str | Path | None = None, *,
                     max_upload_mb: float = 512.0, max_sessions: int = 8, idle_minutes: float = 10.0,
                     device: str = "auto", runtime: str = "auto", sample: bool = True,
                     stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT / SIGTERM)."""
    configure_environment()
    from aiohttp import web

    from .context import Limits
    from .data_folder import DataFolder
    from .engine import SharedEngine, preload_native_libraries
    from .gateway import Gateway
    from .session import WebSession

    preload_native_libraries()  # before any render window: see its docstring (a crash otherwise)
    folder = DataFolder(data if data is not None else DEFAULT_DATA)
    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), max_sessions=max_sessions,
                    idle_seconds=idle_minutes * 60.0)
    engine = SharedEngine(device=device, runtime=runtime)

    def make_session(token: str) -> WebSession:
        return WebSession(token, folder, engine, limits, _initial_volume(folder, sample))

    gateway = Gateway(make_session, limits, on_close=engine.shutdown)
    runner = web.AppRunner(gateway.application(), handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    actual = runner.addresses[0][1]
    print(f"SPDSegment web app: http://{host}:{actual}/  (data folder: {folder.root})", flush=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(port: int = 8080, host: str = "127.0.0.1", data: str | Path | None = None, **options) -> int:
    """Blocking entry point (the CLI's ``serve`` subcommand)."""
    asyncio.run(run_server(port, host, data, **options))
    return 0


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m SPDSegmentLib serve", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port; default 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the app "
                             "to the network without authentication)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"the only folder the app reads and writes (default {DEFAULT_DATA})")
    parser.add_argument("--max-upload-mb", type=float, default=512.0, help="largest upload accepted (default 512)")
    parser.add_argument("--max-sessions", type=int, default=8, help="browser sessions open at once (default 8)")
    parser.add_argument("--idle-minutes", type=float, default=10.0,
                        help="close a session this long after its last page disconnected (default 10)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                        help="SAM runtime (see 'segment --help')")
    parser.add_argument("--no-sample", action="store_true",
                        help="start with an empty scene when the data folder holds no volume")
    return parser


def options_from_args(args: argparse.Namespace) -> dict:
    return {"port": args.port, "host": args.host, "data": args.data, "max_upload_mb": args.max_upload_mb,
            "max_sessions": args.max_sessions, "idle_minutes": args.idle_minutes, "device": args.device,
            "runtime": args.runtime, "sample": not args.no_sample}


def missing_dependencies() -> list[str]:
    """The browser app's packages (the ``web`` extra) that are not installed."""
    import importlib.util

    return [name for name in ("trame_slicer", "trame_vuetify", "aiohttp", "slicer")
            if importlib.util.find_spec(name) is None]


def serve_from_args(args: argparse.Namespace) -> int:
    """The ``serve`` subcommand, given the options :func:`build_parser` added."""
    missing = missing_dependencies()
    if missing:
        print(f"error: the browser app needs {', '.join(missing)}: pip install 'spdsegment[web]' "
              "(trame-slicer[standalone]==2.0.0, see constraints.txt)", file=sys.stderr)
        return 2
    if args.max_upload_mb <= 0 or args.max_sessions < 1 or args.idle_minutes <= 0:
        print("error: --max-upload-mb, --max-sessions and --idle-minutes must be positive", file=sys.stderr)
        return 2
    options = options_from_args(args)
    return serve(options.pop("port"), options.pop("host"), options.pop("data"), **options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("SPDSegmentLib").setLevel(logging.INFO)
    return serve_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
