"""The test kubelet's HTTPS endpoint for ``kubectl logs`` (``/containerLogs/{ns}/{pod}/{c}``).

The API server serves pod logs by calling the kubelet of the pod's node, with its own client
certificate; this is the one kubelet endpoint worth having, because a failed Job is debugged
through its pods' logs. ``tailLines``, ``limitBytes``, ``previous`` and ``follow`` are honoured;
exec, attach, port-forward and metrics are not served.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LogSource = Callable[[str, str, str, bool], tuple[Path, Callable[[], bool]] | None]
"""(namespace, pod, container, previous) -> (log file, still running?) or None if unknown."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: simple streaming
    server: _LogServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the API server polls logs and the kubelet log should stay readable."""

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["healthz"]:
            self._reply(200, b"ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, b"the metatide test kubelet serves only /containerLogs and /healthz\n")
            return
        query = urllib.parse.parse_qs(url.query)
        found = self.server.source(parts[1], parts[2], parts[3], query.get("previous") == ["true"])
        if found is None:
            self._reply(
                404,
                f"container {parts[3]!r} of pod {parts[1]}/{parts[2]} is unknown here\n".encode(),
            )
            return
        path, running = found
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        data = _read(path)
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = (
                b"".join(lines[-int(query["tailLines"][0]) :])
                if int(query["tailLines"][0])
                else b""
            )
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        self.wfile.write(data)
        if query.get("follow") == ["true"]:
            self._follow(path, running, len(_read(path)))

    def _follow(self, path: Path, running: Callable[[], bool], offset: int) -> None:
        while True:
            alive = running()
            chunk = _read(path)[offset:]
            if chunk:
                self.wfile.write(chunk)
                self.wfile.flush()
                offset += len(chunk)
            if not alive:
                return
            time.sleep(0.2)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


class _LogServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, source: LogSource) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.source = source


def serve(port: int, cert: Path, key: Path, ca: Path, source: LogSource) -> threading.Thread:
    """Starts the HTTPS log server in a daemon thread; clients must present a cert of ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = _LogServer(port, source)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="log-server", daemon=True)
    thread.start()
    return thread
