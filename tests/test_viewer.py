"""`avatarsdk view`: the 127.0.0.1 server (routes, no traversal), the shipped three.js, and the page in
headless Chromium (tests/viewer_screenshot.mjs) with a morph slider moved from 0 to 1."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import ROOT
from avatarsdk.cli import app
from avatarsdk.errors import InputError
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.viewer import GLB_ROUTE, STATIC_DIR, ViewerServer, static_routes

NODE_MODULES = ROOT / "node_modules"
SCREENSHOT_JS = ROOT / "tests" / "viewer_screenshot.mjs"
runner = CliRunner()


@pytest.fixture(scope="module")
def glb(tmp_path_factory):
    out = tmp_path_factory.mktemp("viewer") / "head one.glb"  # a space: the name is quoted in headers
    r = runner.invoke(app, ["random", "--source", "ict", "--seed", "1", "-o", str(out), "--texture-size", "256"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture()
def server(glb):
    with ViewerServer(glb) as s:
        s.start()
        yield s


def _raw(port: int, target: str, *, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    """Send one request with the target exactly as given (no client-side normalisation)."""
    host = host or f"127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# --- the server -------------------------------------------------------------------------------


def test_serves_the_page_the_static_files_and_the_glb(server, glb):
    assert server.server_address[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/"
    status, headers, body = _raw(server.port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'type="importmap"' in body and b"/static/viewer.js" in body
    assert "script-src 'self' 'sha256-" in headers["content-security-policy"]
    status, headers, body = _raw(server.port, GLB_ROUTE)
    assert status == 200 and headers["content-type"] == "model/gltf-binary"
    assert body == glb.read_bytes()
    assert headers["content-disposition"] == 'inline; filename="head%20one.glb"'
    for route in server.routes:
        status, headers, body = _raw(server.port, route)
        assert status == 200, route
        assert int(headers["content-length"]) == len(body) > 0
        if route.endswith(".js"):
            assert headers["content-type"].startswith("text/javascript")  # module scripts require it
    status, headers, body = _raw(server.port, "/static/viewer.js", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000


@pytest.mark.parametrize(
    "target",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/three/../../server.py",
        "/../pyproject.toml",
        "/..%2f..%2fpyproject.toml",
        "/static/",
        "/static",
        "/static/three/",
        "/static/three/build",
        "/static/three/LICENSE",  # shipped beside the files, not needed by the page
        "/static//viewer.js",
        "/index.html/",
        "/server.py",
        "/__init__.py",
        "/etc/passwd",
        "//etc/passwd",
        "/model.glb/..",
        "/%2e%2e/%2e%2e/etc/passwd",
        "http://127.0.0.1/../pyproject.toml",
        "*",
    ],
)
def test_nothing_else_is_reachable(server, target):
    status, _, body = _raw(server.port, target)
    assert status in (400, 404), (target, status)
    assert b"import" not in body and b"glTF" not in body


def test_refuses_foreign_host_headers_and_other_methods(server):
    assert _raw(server.port, "/", host=f"evil.example:{server.port}")[0] == 403
    assert _raw(server.port, "/", host=f"localhost:{server.port}")[0] == 200
    assert _raw(server.port, "/", method="POST")[0] == 501
    assert _raw(server.port, "/", method="PUT")[0] == 501


def test_symlinks_in_the_static_folder_are_not_served(glb, tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>x</title>")
    (static / "ok.js").write_text("export const x = 1;")
    secret = tmp_path / "secret.js"
    secret.write_text("secret")
    (static / "leak.js").symlink_to(secret)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "evil.js").write_text("evil")
    (static / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert set(static_routes(static)) == {"/", "/static/ok.js"}
    with ViewerServer(glb, static_dir=static) as s:
        s.start()
        assert _raw(s.port, "/static/leak.js")[0] == 404
        assert _raw(s.port, "/static/ok.js")[0] == 200


def test_bad_inputs(glb, tmp_path):
    not_glb = tmp_path / "x.glb"
    not_glb.write_bytes(b"hello world, not a glb")
    with pytest.raises(InputError, match="not a binary glTF"):
        ViewerServer(not_glb)
    with pytest.raises(InputError, match="not a file"):
        ViewerServer(tmp_path)
    with pytest.raises(InputError, match="port"):
        ViewerServer(glb, port=70000)
    with ViewerServer(glb) as first, pytest.raises(InputError, match="cannot listen"):
        ViewerServer(glb, port=first.port)
    with pytest.raises(InputError, match="viewer page not found"):
        ViewerServer(glb, static_dir=tmp_path)
    r = runner.invoke(app, ["view", str(not_glb), "--no-browser"])
    assert r.exit_code == 2 and "not a binary glTF" in r.output


def test_cli_view_serves_until_stopped(glb):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from avatarsdk.cli import main; main()", "view", str(glb),
                             "--no-browser", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert lines and lines[0], proc.stderr.read() if proc.poll() is not None else "no output in 60 s"
        assert "52 morph targets" in lines[0]
        url = re.search(r"http://127\.0\.0\.1:\d+/", lines[0]).group(0)
        with urllib.request.urlopen(url + "model.glb", timeout=10) as resp:
            assert resp.read() == glb.read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)


# --- the shipped three.js -------------------------------------------------------------------------


def _import_map() -> dict[str, str]:
    html = (STATIC_DIR / "index.html").read_text()
    return json.loads(re.search(r'<script type="importmap">(.*?)</script>', html, re.S).group(1))["imports"]


def test_every_module_import_resolves_to_a_served_file():
    """Follow the page's module graph through the import map: nothing may 404 in the browser."""
    imports, routes = _import_map(), static_routes()
    todo, seen = ["/static/viewer.js"], set()
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        assert url in routes, f"{url} is imported but not shipped"
        text = routes[url].path.read_text(encoding="utf-8")
        for spec in re.findall(r"""(?:^|\n)\s*(?:import|export)\b[^'"]*?\bfrom\s*['"]([^'"]+)['"]""", text) + \
                re.findall(r"""(?:^|\n)\s*import\s*['"]([^'"]+)['"]""", text):
            if spec.startswith(("./", "../")):
                resolved = str(PurePosixPath(url).parent.joinpath(spec))
                parts: list[str] = []
                for p in resolved.split("/"):
                    if p == "..":
                        parts.pop()
                    elif p != ".":
                        parts.append(p)
                todo.append("/".join(parts))
            else:
                prefix = max((k for k in imports if spec == k or (k.endswith("/") and spec.startswith(k))),
                             key=len, default=None)
                assert prefix is not None, f"bare import {spec!r} in {url} is not in the import map"
                todo.append(imports[prefix] + spec[len(prefix):])
    assert {"/static/three/build/three.module.js", "/static/three/build/three.core.js",
            "/static/three/examples/jsm/loaders/GLTFLoader.js",
            "/static/three/examples/jsm/controls/OrbitControls.js"} <= seen
    assert (STATIC_DIR / "three" / "LICENSE").read_text().startswith("The MIT License")


def test_shipped_three_is_the_pinned_version():
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["three"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin three to an exact version"
    shipped = json.loads((STATIC_DIR / "three" / "package.json").read_text())["version"]
    assert shipped == pinned, "run `make viewer-static` after changing the three pin"
    source = NODE_MODULES / "three"
    if not (source / "package.json").is_file():
        pytest.skip(f"{source} not installed (`npm ci`): cannot compare the copied files")
    for f in (STATIC_DIR / "three").rglob("*"):
        if f.is_file():
            rel = f.relative_to(STATIC_DIR / "three")
            assert f.read_bytes() == (source / rel).read_bytes(), f"{rel} differs: run `make viewer-static`"


# --- the page in headless Chromium -------------------------------------------------------------


def _browser_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: the headless-browser test drives Chromium from node")
    if not (NODE_MODULES / "puppeteer-core" / "package.json").is_file():
        pytest.skip("puppeteer-core not installed: run `npm ci` (make setup)")
    if not os.environ.get("AVATARSDK_CHROME") and not (NODE_MODULES / "@sparticuz" / "chromium" / "bin").is_dir():
        pytest.skip("no Chromium: @sparticuz/chromium not installed (`npm ci`) and AVATARSDK_CHROME not set")
    return node


def _head_box(image: np.ndarray, background: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.abs(image - background).sum(-1) > 12)
    return int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())


def test_page_in_headless_chromium_moves_the_jaw(glb, server, tmp_path):
    node = _browser_or_skip()
    t0 = time.perf_counter()
    # @sparticuz/chromium unpacks the browser and its GL libraries into the temp folder and reuses
    # whatever it finds there; a private one keeps other runs' (other versions') files out.
    with tempfile.TemporaryDirectory(prefix="avatarsdk-chromium-") as browser_tmp:
        proc = subprocess.run([node, str(SCREENSHOT_JS), server.url, str(tmp_path), "jawOpen"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": browser_tmp})
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    seconds = time.perf_counter() - t0
    print(f"{result['browser']}: {seconds:.1f} s, {result['ms']}")

    assert result["state"] == "ready", result["status"]
    assert result["errors"] == []  # no console errors or warnings, no failed or 4xx requests
    assert result["morphNames"] == list(ARKIT_NAMES) == result["sliders"]  # one slider per target in the glb
    a = np.asarray(Image.open(result["shots"]["0"]).convert("RGB")).astype(int)
    b = np.asarray(Image.open(result["shots"]["1"]).convert("RGB")).astype(int)
    assert a.shape == b.shape and a.shape[0] > 300

    background = a[0, 0]
    x0, x1, y0, y1 = _head_box(a, background)
    width, height = x1 - x0, y1 - y0
    assert width > 0.3 * a.shape[1] and height > 0.5 * a.shape[0]  # the head fills the view
    diff = np.abs(a - b).sum(-1)  # [H, W] summed over RGB, 0..765
    changed = diff > 30
    ys, xs = np.nonzero(changed)
    # Lower face: centre third of the head's width, 40-90 % down its height (mouth, jaw, chin).
    box = np.zeros_like(changed)
    box[int(y0 + 0.4 * height):int(y0 + 0.9 * height), int((x0 + x1) / 2 - 0.3 * width):
        int((x0 + x1) / 2 + 0.3 * width)] = True
    upper = np.zeros_like(changed)
    upper[:int(y0 + 0.3 * height)] = True  # scalp and forehead
    inside, outside = int((changed & box).sum()), int((changed & ~box).sum())
    print(f"head {width}x{height}px; changed pixels {changed.sum()} ({inside} in the lower-face box, "
          f"{outside} outside); mean |diff| inside {diff[box].mean():.1f}, outside {diff[~box].mean():.2f}, "
          f"above the eyes {diff[upper].mean():.3f}; centroid ({(xs.mean() - x0) / width:.2f}, "
          f"{(ys.mean() - y0) / height:.2f}) of the head box")
    assert changed.sum() > 2000
    assert inside > 0.8 * changed.sum()
    assert abs(xs.mean() - (x0 + x1) / 2) < 0.05 * width  # centred: the mouth, not one side
    assert 0.5 < (ys.mean() - y0) / height < 0.7
    assert diff[~box].mean() < 2.0 and diff[upper].mean() < 0.5
    assert changed[upper].mean() < 0.002
