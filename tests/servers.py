"""Real servers started by tests on loopback, checked over HTTP."""

import json
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str, payload: dict | None = None) -> str:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def api(url: str, payload: dict | None = None) -> dict:
    return json.loads(fetch(url, payload))


@contextmanager
def serving(command: list[str], ready_url: str, timeout_seconds: float = 60):
    """Run `command` until the block ends; enter once `ready_url` answers."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                fetch(ready_url)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited: {server.stderr.read()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{' '.join(command)} did not answer {ready_url} in {timeout_seconds} s")
                time.sleep(0.5)
        yield
    finally:
        server.terminate()
        server.wait(timeout=20)
