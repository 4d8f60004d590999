"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a page, wait until
the page itself says it is ready, then take its DOM and a screenshot. The protocol's WebSocket client is
`websockets`, which Streamlit already depends on."""

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--remote-debugging-port=0"]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One browser tab, spoken to over its DevTools WebSocket."""

    def __init__(self, socket):
        self._socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events arrive between answers: skip them
            message = json.loads(self._socket.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout_seconds: float = 90) -> None:
        """Until the JavaScript `expression` is true in the page."""
        deadline = time.monotonic() + timeout_seconds
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied {expression} in {timeout_seconds} s")
            time.sleep(0.5)

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


@contextmanager
def open_page(url: str, width: int = 1600, height: int = 1800):
    """The page at `url` in a fresh headless Chromium (its own profile, removed afterwards)."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    browser = subprocess.Popen([chromium_binary(), *FLAGS, f"--user-data-dir={profile}",
                                f"--window-size={width},{height}", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(profile, browser)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            target = next(t for t in json.load(answer) if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as socket:
            yield Page(socket)
    finally:
        browser.terminate()
        browser.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(profile: Path, browser: subprocess.Popen, timeout_seconds: float = 30) -> int:
    """Chromium writes the port it chose into its profile once it listens."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_seconds
    while not (active.is_file() and active.read_text().strip()):
        if browser.poll() is not None:
            raise RuntimeError(f"chromium exited with code {browser.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"chromium opened no DevTools port in {timeout_seconds} s")
        time.sleep(0.1)
    return int(active.read_text().split()[0])
