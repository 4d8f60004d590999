"""Paths read from a stored manifest are not trusted: they must stay inside the folder the manifest belongs to."""

from pathlib import Path


def first_outside(paths, folder, allowed=()) -> str | None:
    """The first non-empty path of `paths` that resolves outside `folder` and is not one of `allowed`; None
    if there is none."""
    inside = Path(folder).resolve()
    allowed = {Path(path).resolve() for path in allowed}
    for path in paths:
        if path and not (resolved := Path(path).resolve()).is_relative_to(inside) and resolved not in allowed:
            return str(path)
    return None
