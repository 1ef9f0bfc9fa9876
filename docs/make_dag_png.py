"""Regenerate docs/dag.png: a screenshot of the `kedro viz build` site, taken with headless Chromium.

    python docs/make_dag_png.py            # needs `chromium` (Debian: apt-get install -y chromium)

The site is built from a temporary copy of conf/ (so build/ and .viz stay out of the work tree),
served on 127.0.0.1 only, and opened with kedro-viz's saved settings pre-set (light theme, no
sidebar, minimap or feature tour, modular pipelines expanded) so the shot shows just the DAG.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# What kedro-viz keeps in localStorage["KedroViz"]; set before its scripts run.
VIZ_STATE = {
    "theme": "light",
    "showFeatureHints": False,
    "expandAllPipelines": True,
    "textLabels": True,
    "orientation": "vertical",
    "visible": {"sidebar": False, "miniMap": False, "code": False, "graph": True, "slicing": True,
                "traceback": False},
}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
NAV_WIDTH_CSS_PX = 135  # kedro-viz's two icon bars on the left, cropped from the shot


def build_site(workdir: Path) -> Path:
    """Run `kedro viz build` on a copy of the project's config; return the build folder."""
    shutil.copytree(ROOT / "conf", workdir / "conf", ignore=shutil.ignore_patterns("local"))
    (workdir / "conf" / "local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", workdir)
    (workdir / "src").mkdir()  # the package is imported from the installed distribution
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=workdir, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    build = workdir / "build"
    page = (build / "index.html").read_text()
    script = f"<script>localStorage.setItem('KedroViz', {json.dumps(json.dumps(VIZ_STATE))});</script>"
    (build / "shot.html").write_text(page.replace("<head>", "<head>" + script, 1))
    return build


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` on a free loopback port for as long as the block runs."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join()


def screenshot(url: str, out: Path, width: int, height: int, scale: float) -> None:
    """Headless Chromium shot of ``url``; the left navigation bars are cropped off."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        sys.exit("chromium not found (Debian: apt-get install -y chromium)")
    raw = out.with_suffix(".raw.png")
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--window-size={width},{height}",
                    f"--force-device-scale-factor={scale}", "--virtual-time-budget=15000",
                    f"--screenshot={raw}", url], check=True, capture_output=True, timeout=120)
    with Image.open(raw) as image:
        image.crop((int(NAV_WIDTH_CSS_PX * scale), 0, image.width, image.height)).save(out, optimize=True)
    raw.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dag.png")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=1800)
    parser.add_argument("--scale", type=float, default=1.25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build = build_site(Path(tmp))
        with serve(build) as url:
            screenshot(f"{url}/shot.html", args.out, args.width, args.height, args.scale)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
