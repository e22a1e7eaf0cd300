"""Running the app under uvicorn on a socket bound first (so `--port 0` picks a free port we can print).

  bind(host, port) -> socket                   listening TCP socket (IPv4 or IPv6 from the host string)
  serve(app, sock)                             blocks until Ctrl-C / SIGTERM (uvicorn's own signal handling)
  ServerThread(app, host="127.0.0.1", port=0)  context manager: the server in a background thread; `.url`
                                               (used by the tests and `benchmarks/serve_load.py`)
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app, log_level: str) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5))


def serve(app, sock: socket.socket, log_level: str = "info") -> None:
    _server(app, log_level).run(sockets=[sock])


class ServerThread:
    """`with ServerThread(app) as s: httpx.get(s.url + "/health")` — uvicorn in a daemon thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = _server(app, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 300
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
