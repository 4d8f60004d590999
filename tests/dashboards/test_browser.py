"""`streamlit run dashboards/leaderboard.py` as a user starts it, seen by a real headless Chromium: the
server binds to loopback only, and the rendered page holds the leaderboard's rows and the scatter. The
screenshot is kept as a test artefact (in $TEST_ARTEFACTS_DIR, else in pytest's base temporary directory)."""

import os
import sys
from pathlib import Path

import pytest
from headless_chromium import chromium_binary, open_page
from servers import free_port, serving

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "leaderboard.py"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium_binary() is None,
                                 reason="Chromium not installed (Debian package `chromium`, which .ci/run installs)")]

ROWS_AND_CHART_RENDERED = (
    "document.querySelectorAll('[data-testid=stDataFrame] table tbody tr').length >= {rows}"
    " && document.querySelector('[data-testid=stVegaLiteChart] svg, [data-testid=stVegaLiteChart] canvas') !== null")


def listening_addresses(port: int) -> set[str]:
    """The local addresses on which something listens on TCP `port` (from Linux's /proc/net/tcp and tcp6)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                addresses.add({"0100007F": "127.0.0.1", "00000000": "0.0.0.0"}.get(address, address))
    return addresses


@pytest.fixture
def artefacts(tmp_path_factory) -> Path:
    directory = Path(os.environ.get("TEST_ARTEFACTS_DIR") or tmp_path_factory.getbasetemp() / "artefacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_the_served_page_shows_the_leaderboard_rows_and_the_scatter(filled_store, artefacts):
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(DASHBOARD), "--server.port", str(port),
               "--server.headless", "true", "--", "--tracking-uri", filled_store.uri]
    with serving(command, f"http://127.0.0.1:{port}/_stcore/health"):
        assert listening_addresses(port) == {"127.0.0.1"}  # dashboards/.streamlit/config.toml, no flag
        candidates = list(filled_store.selection.leaderboard["candidate"])
        with open_page(f"http://127.0.0.1:{port}/") as page:
            page.wait_for(ROWS_AND_CHART_RENDERED.format(rows=len(candidates)))
            screenshot = page.screenshot(artefacts / "leaderboard.png")
            dom = page.dom()
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 50_000
    table = dom[dom.index('data-testid="stDataFrame"'):]
    assert all(f">{name}<" in table for name in candidates)
    assert f">{filled_store.selection.pick.name}</code>" in dom[dom.index("Pick:"):]
    chart = dom[dom.index('data-testid="stVegaLiteChart"'):]
    assert "generator family" in chart and "synthetic AUROC" in chart
