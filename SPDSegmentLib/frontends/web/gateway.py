"""The one public port: gives each browser its own session and forwards its traffic.

``GET /`` creates a session (its own trame server on a free port of 127.0.0.1, its own Slicer
scene) and redirects to ``/s/<token>/``. Everything under ``/s/<token>/`` is forwarded to that
session's server (HTTP and the websocket), except three routes handled here, in-process:

* ``POST upload``: streamed to a temporary folder with a size limit, then loaded into the session;
* ``GET download/<name>.seg.nrrd``: the session's segmentation;
* ``GET api/scene``: a read-only JSON description of the session's scene (scripts, tests).

The token is random and unguessable; a session knows nothing of the others. A session is closed
when no page has been connected to it for ``idle_seconds``.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from .context import Limits
from .data_folder import DataPathError, safe_file_name
from .scene_io import SceneIOError
from .session import WebSession

log = logging.getLogger(__name__)

_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                "transfer-encoding", "upgrade", "content-length", "content-encoding", "host"}
WS_MAX_MESSAGE = 64 * 2**20  # wslink splits larger messages; this bounds what one frame may hold


@dataclass
class _Entry:
    session: WebSession
    port: int
    connections: int = 0
    idle_timer: asyncio.TimerHandle | None = None
    sockets: set = field(default_factory=set)


class Gateway:
    def __init__(self, make_session: Callable[[str], WebSession], limits: Limits, on_close: Callable | None = None):
        self._make_session = make_session
        self.limits = limits
        self._entries: dict[str, _Entry] = {}
        self._creating = asyncio.Lock()  # trame binds a new server to its protocol class: one at a time
        self._client: aiohttp.ClientSession | None = None
        self._on_close = on_close

    # --- application ---------------------------------------------------------------------------
    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self.new_session)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/s/{token}", self.add_slash)
        app.router.add_get("/s/{token}/api/scene", self.scene)
        app.router.add_post("/s/{token}/upload", self.upload)
        app.router.add_get("/s/{token}/download/{name}", self.download)
        app.router.add_route("*", "/s/{token}/{tail:.*}", self.forward)
        app.on_cleanup.append(self._cleanup)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler):
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")  # the token is in the path
        return response

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(auto_decompress=True)
        return self._client

    # --- sessions ------------------------------------------------------------------------------
    async def new_session(self, request: web.Request) -> web.StreamResponse:
        token = secrets.token_urlsafe(12)
        async with self._creating:
            if len(self._entries) >= self.limits.max_sessions:
                return web.Response(status=503, text=f"SPDSegment: {len(self._entries)} sessions are open, the "
                                                     "most this server allows; close a tab or try again later.")
            session = self._make_session(token)
            port = await session.start()
            entry = _Entry(session, port)
            self._entries[token] = entry
        self._arm_idle(token, entry)
        log.info("session %s opened on internal port %d (%d open)", token[:4], port, len(self._entries))
        raise web.HTTPFound(f"/s/{token}/")

    def _entry(self, request: web.Request) -> _Entry:
        entry = self._entries.get(request.match_info["token"])
        if entry is None:
            raise web.HTTPNotFound(text="SPDSegment: this session has ended. Open / for a new one.")
        return entry

    def _arm_idle(self, token: str, entry: _Entry) -> None:
        if entry.idle_timer is not None:
            entry.idle_timer.cancel()
        loop = asyncio.get_running_loop()
        entry.idle_timer = loop.call_later(self.limits.idle_seconds,
                                           lambda: asyncio.ensure_future(self.close_session(token)))

    async def close_session(self, token: str) -> None:
        entry = self._entries.pop(token, None)
        if entry is None:
            return
        if entry.idle_timer is not None:
            entry.idle_timer.cancel()
        for ws in list(entry.sockets):
            await ws.close()
        started = time.perf_counter()
        await entry.session.stop()
        log.info("session %s closed in %.1f s (%d open)", token[:4], time.perf_counter() - started, len(self._entries))

    async def _cleanup(self, _app: web.Application) -> None:
        if self._client is not None:  # first: its keep-alive connections would hold the sessions' servers open
            await self._client.close()
            self._client = None
        await asyncio.gather(*(self.close_session(token) for token in list(self._entries)))
        if self._on_close is not None:
            self._on_close()

    # --- routes handled here -------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self._entries)})

    async def add_slash(self, request: web.Request) -> web.Response:
        self._entry(request)
        raise web.HTTPFound(f"/s/{request.match_info['token']}/")

    async def scene(self, request: web.Request) -> web.Response:
        return web.json_response(self._entry(request).session.describe())

    async def download(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        try:
            name, data = entry.session.download_segmentation()
        except SceneIOError as exc:
            return web.Response(status=404, text=str(exc))
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def upload(self, request: web.Request) -> web.Response:
        """Stream the files of a multipart form to a temporary folder, refuse past the size limit."""
        entry = self._entry(request)
        limit = self.limits.max_upload_bytes

        def reply(ok: bool, message: str, status: int = 200) -> web.Response:
            entry.session.ctx.notify(message, "success" if ok else "error")
            return web.json_response({"ok": ok, "message": message}, status=status)

        too_big = (f"upload refused: it is larger than the limit of {limit / 2**20:.1f} MB "
                   "(serve --max-upload-mb)")
        if request.content_length is not None and request.content_length > limit + 2**20:
            return reply(False, too_big, 413)
        with tempfile.TemporaryDirectory(prefix="spd-upload-") as folder:
            files: list[Path] = []
            total = 0
            try:
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not getattr(part, "filename", None):
                        continue
                    name = safe_file_name(part.filename)
                    path = Path(folder) / name
                    n = 1
                    while path.exists():
                        path, n = Path(folder) / f"{n}_{name}", n + 1
                    with path.open("wb") as f:
                        while chunk := await part.read_chunk(2**20):
                            total += len(chunk)
                            if total > limit:
                                return reply(False, too_big, 413)
                            f.write(chunk)
                    files.append(path)
            except DataPathError as exc:
                return reply(False, f"upload refused: {exc}", 400)
            except (ValueError, AssertionError, aiohttp.ClientError) as exc:
                return reply(False, f"upload failed: not a valid file upload ({exc})", 400)
            if not files:
                return reply(False, "upload refused: no file in the request", 400)
            try:
                return reply(True, entry.session.receive_upload(files))
            except (SceneIOError, DataPathError, ValueError) as exc:
                return reply(False, str(exc), 422)
            except Exception as exc:  # a bad file must never take the server down
                log.exception("loading an upload failed")
                return reply(False, f"could not load the upload: {type(exc).__name__}: {exc}", 422)

    # --- forwarding ----------------------------------------------------------------------------
    async def forward(self, request: web.Request) -> web.StreamResponse:
        entry = self._entry(request)
        tail = request.match_info["tail"]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._forward_ws(request, entry, tail)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read() if request.can_read_body else None
        url = f"http://127.0.0.1:{entry.port}/{tail}"
        async with self.client.request(request.method, url, params=request.query, headers=headers, data=body,
                                       allow_redirects=False) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=payload, headers=out_headers)

    async def _forward_ws(self, request: web.Request, entry: _Entry, tail: str) -> web.WebSocketResponse:
        token = request.match_info["token"]
        browser = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE)
        await browser.prepare(request)
        entry.connections += 1
        entry.sockets.add(browser)
        if entry.idle_timer is not None:
            entry.idle_timer.cancel()
            entry.idle_timer = None
        try:
            async with self.client.ws_connect(f"ws://127.0.0.1:{entry.port}/{tail}", max_msg_size=0) as upstream:
                pumps = [asyncio.ensure_future(_pump(browser, upstream)),
                         asyncio.ensure_future(_pump(upstream, browser))]
                _done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
        except aiohttp.ClientError as exc:
            log.warning("session %s: websocket to the session server failed: %s", token[:4], exc)
        finally:
            entry.connections -= 1
            entry.sockets.discard(browser)
            if entry.connections == 0 and token in self._entries:
                self._arm_idle(token, entry)
            await browser.close()
        return browser


async def _pump(source, target) -> None:
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await target.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await target.send_bytes(message.data)
        else:  # CLOSE, CLOSING, ERROR
            break
