"""A tiny HTTP server on 127.0.0.1 for download tests: routes map a path to a handler.

A route is ``(status, headers, body)`` or a callable ``(handler, body_bytes) -> that tuple``;
``"stall"`` accepts the request and never answers; ``("short", body, declared_length)``
announces more bytes than it sends and closes. Every request is logged in ``server.log``
as ``(method, path, headers)``.
"""

from __future__ import annotations

import http.server
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _serve(self):
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server.log.append((self.command, self.path, dict(self.headers), body))
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404, "not found")
            return
        if callable(route):
            route = route(self, body)
        if route == "stall":
            server.release.wait(30)
            return
        if route[0] == "short":
            _, data, declared = route
            self.send_response(200)
            self.send_header("Content-Length", str(declared))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = True
            return
        status, headers, data = route
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve


class LocalServer:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.log = []
        self.httpd.release = threading.Event()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def routes(self) -> dict:
        return self.httpd.routes

    @property
    def log(self) -> list:
        return self.httpd.log

    def close(self):
        self.httpd.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """An address on 127.0.0.1 where nothing listens: connecting is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
