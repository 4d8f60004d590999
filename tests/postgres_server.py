"""A throwaway PostgreSQL server on loopback, from Debian's `postgresql` package, for tests that need a
real shared Optuna storage."""

import glob
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from servers import free_port

SERVICE_USER = "postgres"  # created by the Debian package; the server refuses to run as root


def server_binaries() -> Path | None:
    """The newest installed server's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_service_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--", *command] if os.geteuid() == 0 else command


@contextmanager
def running_server(database: str = "optuna"):
    """Yield a SQLAlchemy URL to `database` on a fresh server; the server and its files go afterwards."""
    binaries = server_binaries()
    if binaries is None:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql")
    base = Path(tempfile.mkdtemp(prefix="pg-test-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, SERVICE_USER)
        shutil.chown(sockets, SERVICE_USER)
    port = free_port()

    def run(*command: str) -> None:
        subprocess.run(_as_service_user([str(binaries / command[0]), *command[1:]]), check=True,
                       capture_output=True, text=True)

    try:
        run("initdb", "-D", str(data), "-A", "trust", "-U", SERVICE_USER, "--no-sync")
        run("pg_ctl", "-D", str(data), "-w", "-l", str(base / "server.log"),
            "-o", f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off", "start")
        try:
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", SERVICE_USER, database)
            yield f"postgresql+psycopg2://{SERVICE_USER}@127.0.0.1:{port}/{database}"
        finally:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
