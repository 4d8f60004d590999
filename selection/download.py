"""Download MVTec AD: fetch the official archive, check its SHA-256, extract it safely under the data root.

    python -m selection.download --data-root ./data [--categories bottle,cable]
"""

import argparse
import hashlib
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Collection, Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath


from compat.progress import progress
from selection.tasks import resolve_data_root

# The archive as anomalib's MVTec AD datamodule lists it (open-edge-platform/anomalib,
# src/anomalib/data/datamodules/image/mvtecad.py). MVTec rotates its share links: when this URL stops working,
# take the current link from https://www.mvtec.com/company/research/datasets/mvtec-ad and pass it with --url;
# the hash is of the archive's content and must match the published one.
MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/"
    "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz"
)
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
MVTEC_EXTRAS = ("license.txt", "readme.txt")  # kept beside the categories: the data's CC BY-NC-SA terms

CHUNK_BYTES = 1 << 20
# tarfile's "data" filter (Python 3.12, 3.11.4+) also resolves links against what is already extracted,
# which catches link chains that no check of a single member can see
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())  # () catches nothing


class ChecksumError(ValueError):
    """A downloaded file is not the published one."""


class UnsafeArchiveError(ValueError):
    """An archive member would write outside the destination or create a device file."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ChecksumError(f"SHA-256 mismatch for {path}: expected {expected.lower()}, got {actual}")


def download(url: str, path: str | Path) -> None:
    """Stream `url` to `path` with a progress bar; `path` appears only once the download is complete."""
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url) as response, open(partial, "wb") as file:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    bar.update(len(chunk))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def safe_extract(archive: str | Path, destination: str | Path, include: Collection[str] | None = None) -> list[Path]:
    """Extract the tar `archive` into `destination` and return the top-level entries it created.

    `include` limits extraction to these top-level names. Every member is checked before anything is
    written; the entries are extracted into a temporary folder inside `destination` and moved into place
    only when all of them are complete, so a failure leaves `destination` as it was.
    """
    destination = Path(destination)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member)
        selected = [m for m in members if _top_level(m) and (include is None or _top_level(m) in include)]
        top_levels = sorted({_top_level(m) for m in selected})
        existing = [name for name in top_levels if os.path.lexists(destination / name)]
        if existing:
            raise FileExistsError(f"{destination} already has {', '.join(existing)}; not overwriting")
        destination.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=destination))
        try:
            tar.extractall(staging, members=selected, **({"filter": "data"} if HAS_DATA_FILTER else {}))
            for name in top_levels:
                (staging / name).replace(destination / name)
        except _FILTER_ERRORS as error:
            raise UnsafeArchiveError(f"unsafe archive member: {error}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [destination / name for name in top_levels]


def _top_level(member: tarfile.TarInfo) -> str:
    parts = PurePosixPath(member.name).parts
    return parts[0] if parts else ""


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    # read as a Windows path, names are checked for both separators and for drive letters
    if PureWindowsPath(name).anchor:
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in PureWindowsPath(name).parts:
        raise UnsafeArchiveError(f"archive member {name!r} has a '..' component")
    if member.isdev():
        raise UnsafeArchiveError(f"archive member {name!r} is a device file or FIFO")
    if member.issym() or member.islnk():
        if not HAS_DATA_FILTER:
            raise UnsafeArchiveError(f"archive member {name!r} is a link; extracting links needs Python 3.11.4+")
        # a symlink's target is relative to its own folder, a hard link's to the archive root
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        if PureWindowsPath(member.linkname).anchor or target == ".." or target.startswith("../"):
            raise UnsafeArchiveError(f"archive member {name!r} links outside the destination: {member.linkname!r}")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {name!r} has unsupported type {member.type!r}")


def download_mvtec(
    destination: str | Path,
    categories: Iterable[str] | None = None,
    url: str = MVTEC_URL,
    sha256: str = MVTEC_SHA256,
) -> list[Path]:
    """Put MVTec AD categories (default: all 15) under `destination`; categories already there are kept.

    Returns the category folders. The archive is deleted afterwards, and at once when its hash is wrong.
    """
    destination = Path(destination)
    categories = list(MVTEC_CATEGORIES if categories is None else categories)
    unknown = sorted(set(categories) - set(MVTEC_CATEGORIES))
    if unknown:
        raise ValueError(f"unknown MVTec AD categories {', '.join(unknown)}; known: {', '.join(MVTEC_CATEGORIES)}")
    missing = [name for name in categories if not (destination / name).exists()]
    if missing:
        destination.mkdir(parents=True, exist_ok=True)
        archive = destination / (".download-" + PurePosixPath(urllib.parse.urlparse(url).path).name)
        try:
            download(url, archive)
            verify_sha256(archive, sha256)
            extras = [name for name in MVTEC_EXTRAS if not (destination / name).exists()]
            safe_extract(archive, destination, include=missing + extras)
        finally:
            archive.unlink(missing_ok=True)
        absent = [name for name in missing if not (destination / name).is_dir()]
        if absent:
            raise ValueError(f"the archive from {url} has no category {', '.join(absent)}")
    return [destination / name for name in categories]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m selection.download",
        description="Download MVTec AD (SHA-256 verified, safely extracted) into the data root.",
    )
    parser.add_argument("--data-root", help="where the category folders go (else $ANOMALY_DATA_ROOT, else ./data)")
    parser.add_argument("--categories", help=f"comma-separated (default: all 15: {','.join(MVTEC_CATEGORIES)})")
    parser.add_argument("--url", default=MVTEC_URL, help="archive URL (default: the official archive)")
    parser.add_argument("--sha256", default=MVTEC_SHA256, help="expected SHA-256 of the archive")
    args = parser.parse_args(argv)
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    root = resolve_data_root(args.data_root)
    try:
        folders = download_mvtec(root, categories, args.url, args.sha256)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"MVTec AD ready: {len(folders)} categories under {root}; use --data-root {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
