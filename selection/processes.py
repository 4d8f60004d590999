"""Which process wrote something, and whether it still runs: a run left RUNNING or a folder half-written by a
process that no longer exists on this host was interrupted, and a later process may clean up after it."""

import os
import socket


def this_process() -> str:
    """host:pid of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def ended_on_this_host(process: str) -> bool:
    """Whether `process` (host:pid, as this_process writes it) ran on this host and no longer exists. False
    for another host's process, whose life cannot be seen from here."""
    host, _, pid = process.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or os.name != "posix":  # Windows' kill(pid, 0) is Ctrl-C
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False
