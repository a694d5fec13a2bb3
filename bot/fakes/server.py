"""Run an ASGI app with uvicorn on 127.0.0.1 (ephemeral port) in a background thread.

Used by the fakes so that tests, benchmarks and the demo talk to them over real sockets while the
test's own event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn


class ThreadedServer:
    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, ws: str = "auto") -> None:
        self._app = app
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws=ws, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._server.serve(sockets=[self._sock]))

    def start(self) -> ThreadedServer:
        self._thread = threading.Thread(target=self._run, name=f"asgi-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._sock.close()


@contextlib.contextmanager
def serve_in_thread(app, **kw) -> Iterator[ThreadedServer]:
    server = ThreadedServer(app, **kw).start()
    try:
        yield server
    finally:
        server.stop()
