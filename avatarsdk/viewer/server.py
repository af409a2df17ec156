"""A local HTTP server for the three.js viewer of one .glb (``avatarsdk view``).

It listens on 127.0.0.1 only and answers GET/HEAD for a fixed set of routes,
built when it starts: ``/`` (the page), ``/static/...`` (the page's script and
style and the three.js files shipped in this package) and ``/model.glb`` (the
one file being viewed, read anew on each request so a re-export shows on reload).
Paths are looked up verbatim in that table, so there is no directory listing and
no way to reach any other file (``..``, percent-encoding, absolute paths all 404).
Requests whose Host header is not this server's loopback address are refused
(DNS rebinding).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import struct
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

from avatarsdk.errors import InputError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATIC_DIR = Path(__file__).resolve().parent / "static"
GLB_ROUTE = "/model.glb"
MAX_GLB_BYTES = 512 * 1024 * 1024
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts need a JavaScript MIME type
    ".css": "text/css; charset=utf-8",
}


@dataclass(frozen=True)
class Route:
    """One servable file.

    Attributes:
        path: the file on disk.
        content_type: the Content-Type header value.
        filename: sent as the Content-Disposition filename (the .glb only), else None.
    """

    path: Path
    content_type: str
    filename: str | None = None


def static_routes(static_dir: Path = STATIC_DIR) -> dict[str, Route]:
    """The page and every static file of the viewer, keyed by URL path.

    Args:
        static_dir: folder holding ``index.html``, ``viewer.js`` and ``three/``.

    Returns:
        {"/": index.html, "/static/<relative posix path>": file} for the other regular
        (non-symlink) .html, .js and .css files under ``static_dir``.

    Raises:
        InputError: ``static_dir`` has no ``index.html`` (a broken installation).
    """
    index = static_dir / "index.html"
    if not index.is_file():
        raise InputError(f"viewer page not found at {index}: the avatarsdk installation is incomplete")
    routes = {"/": Route(index, _CONTENT_TYPES[".html"])}
    root = static_dir.resolve()
    for f in sorted(static_dir.rglob("*")):
        # Belt and braces: no links, nothing that resolves outside the folder, the page only at "/".
        if (f.is_file() and not f.is_symlink() and f.suffix in _CONTENT_TYPES and f != index
                and f.resolve().is_relative_to(root)):
            routes["/static/" + f.relative_to(static_dir).as_posix()] = Route(f, _CONTENT_TYPES[f.suffix])
    return routes


def _check_glb(path: Path) -> None:
    """Raise InputError unless ``path`` is a readable binary glTF 2.0 file within the size limit."""
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    size = path.stat().st_size
    if size > MAX_GLB_BYTES:
        raise InputError(f"{path.name} is {size / 1e6:.0f} MB, more than the {MAX_GLB_BYTES / 1e6:.0f} MB limit")
    with path.open("rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"glTF":
        raise InputError(f"{path.name} is not a binary glTF file (missing 'glTF' header)")
    version = struct.unpack_from("<I", head, 4)[0]
    if version != 2:
        raise InputError(f"{path.name} is glTF binary version {version}; only version 2 is supported")


def _inline_script_hashes(html: str) -> list[str]:
    """CSP source expressions ('sha256-...') for each inline <script> of the page (the import map)."""
    out = []
    for body in re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", html, flags=re.S):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        out.append(f"'sha256-{digest}'")
    return out


class ViewerServer(ThreadingHTTPServer):
    """Serve the viewer page, its static files and one .glb on 127.0.0.1.

    Use as a context manager; :meth:`serve_forever` blocks, :meth:`start` serves
    from a daemon thread and :meth:`stop` ends either.

    Args:
        glb: the .glb file to show.
        port: TCP port, 0 for any free one (see :attr:`url`).
        static_dir: the viewer's static folder (the one shipped in this package by default).

    Raises:
        InputError: ``glb`` is not a binary glTF 2.0 file, the port is out of range or in use.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, glb: str | Path, *, port: int = 0, static_dir: Path = STATIC_DIR) -> None:
        glb = Path(glb).resolve()
        _check_glb(glb)
        if not 0 <= port <= 65535:
            raise InputError(f"port must be in [0, 65535], got {port}")
        self.glb = glb
        self.routes = static_routes(static_dir)
        self.routes[GLB_ROUTE] = Route(glb, "model/gltf-binary", filename=glb.name)
        page = self.routes["/"].path.read_text(encoding="utf-8")
        self.page_csp = "; ".join([
            "default-src 'self'",
            "script-src 'self' " + " ".join(_inline_script_hashes(page)),
            # GLTFLoader decodes embedded textures through blob: URLs.
            "img-src 'self' blob: data:",
            "connect-src 'self' blob: data:",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ])
        self._thread: threading.Thread | None = None
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as e:
            raise InputError(f"cannot listen on {HOST}:{port}: {e.strerror or e}") from None
        self.allowed_hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        log.info("viewer for %s on %s", glb, self.url)

    @property
    def port(self) -> int:
        """The TCP port listened on."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """The page's address, ``http://127.0.0.1:PORT/``."""
        return f"http://{HOST}:{self.port}/"

    def start(self) -> threading.Thread:
        """Serve from a daemon thread and return at once.

        Returns:
            The serving thread.
        """
        self._thread = threading.Thread(target=self.serve_forever, name="avatarsdk-viewer", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop serving (if started with :meth:`start`) and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"  # keep-alive: the page fetches a dozen files
    server_version = "avatarsdk-viewer"

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._respond(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(send_body=False)

    def _respond(self, *, send_body: bool) -> None:
        host = self.headers.get("Host")
        if host is not None and host.lower() not in self.server.allowed_hosts:
            self.send_error(HTTPStatus.FORBIDDEN, "Unexpected Host header")
            return
        route = self.server.routes.get(urlsplit(self.path).path) if self.path.startswith("/") else None
        if route is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            body = route.path.read_bytes()
        except OSError as e:
            log.warning("cannot read %s: %s", route.path, e)
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if route.filename is not None:
            self.send_header("Content-Disposition", f"inline; filename=\"{quote(route.filename)}\"")
        if route.path.suffix == ".html":
            self.send_header("Content-Security-Policy", self.server.page_csp)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        log.info("%s %s", self.address_string(), format % args)
