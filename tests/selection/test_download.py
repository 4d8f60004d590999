import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from selection.download import (
    HAS_DATA_FILTER,
    ChecksumError,
    UnsafeArchiveError,
    download_mvtec,
    main,
    safe_extract,
    sha256_of,
    verify_sha256,
)

FILES = {
    "bottle/train/good/000.png": b"normal image",
    "bottle/test/crack/000.png": b"defect image",
    "license.txt": b"CC BY-NC-SA 4.0",
}


def _archive(path: Path, files=FILES, mode: str = "w:xz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _archive_with(path: Path, member: tarfile.TarInfo) -> Path:
    """A gzipped tar with one harmless file and `member`."""
    with tarfile.open(path, "w:gz") as tar:
        fine = tarfile.TarInfo("bottle/fine.txt")
        fine.size = 4
        tar.addfile(fine, io.BytesIO(b"fine"))
        if member.isfile():
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
        else:
            tar.addfile(member)
    return path


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_sha256_of_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)  # more than one chunk
    assert sha256_of(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    verify_sha256(path, hashlib.sha256(b"x" * 3_000_000).hexdigest().upper())


def test_verify_sha256_names_expected_and_actual(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    with pytest.raises(ChecksumError, match=f"expected {'0' * 64}, got {hashlib.sha256(b'abc').hexdigest()}"):
        verify_sha256(path, "0" * 64)


@pytest.mark.parametrize("suffix,mode", [("tar.xz", "w:xz"), ("tar.gz", "w:gz")])
def test_safe_extract(tmp_path, suffix, mode):
    archive = _archive(tmp_path / f"data.{suffix}", mode=mode)
    destination = tmp_path / "out"
    created = safe_extract(archive, destination)
    assert created == [destination / "bottle", destination / "license.txt"]
    assert {name: (destination / name).read_bytes() for name in FILES} == FILES
    assert not [p for p in destination.iterdir() if p.name.startswith(".")]  # staging folder gone


def test_safe_extract_include_and_no_overwrite(tmp_path):
    archive = _archive(tmp_path / "data.tar.xz")
    destination = tmp_path / "out"
    assert safe_extract(archive, destination, include=["bottle"]) == [destination / "bottle"]
    assert not (destination / "license.txt").exists()
    with pytest.raises(FileExistsError, match="bottle"):
        safe_extract(archive, destination)
    assert not (destination / "license.txt").exists()


@pytest.mark.parametrize("name", ["../evil", "bottle/../../evil", "{tmp}/absolute-evil"],
                         ids=["parent", "nested-parent", "absolute"])
def test_path_escapes_are_refused(tmp_path, name):
    archive = _archive_with(tmp_path / "bad.tar.gz", tarfile.TarInfo(name.format(tmp=tmp_path)))
    destination = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="evil"):
        safe_extract(archive, destination)
    assert _files_under(tmp_path) == {"bad.tar.gz"}


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize("member,message", [
    (_link("bottle/passwd", "/etc/passwd"), "links outside"),
    (_link("bottle/up", "../../outside"), "links outside"),
    (_link("bottle/hard", "/etc/passwd", tarfile.LNKTYPE), "links outside"),
    (_link("bottle/hard", "../outside", tarfile.LNKTYPE), "links outside"),
    (_device("bottle/null"), "device"),
], ids=["symlink-absolute", "symlink-relative", "hardlink-absolute", "hardlink-relative", "device"])
def test_links_outside_and_devices_are_refused(tmp_path, member, message):
    archive = _archive_with(tmp_path / "bad.tar.gz", member)
    destination = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, destination)
    assert _files_under(tmp_path) == {"bad.tar.gz"}


needs_data_filter = pytest.mark.skipif(not HAS_DATA_FILTER, reason="links are refused without tarfile's data filter")


@needs_data_filter
def test_links_inside_the_archive_are_kept(tmp_path):
    archive = _archive_with(tmp_path / "ok.tar.gz", _link("bottle/alias.txt", "fine.txt"))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "bottle" / "alias.txt").read_bytes() == b"fine"


@needs_data_filter
def test_a_link_chain_out_of_the_destination_is_refused(tmp_path):
    # each link alone stays inside; together bottle/l2 resolves to the destination's parent
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(_link("bottle/l1", "."))
        tar.addfile(_link("bottle/l2", "l1/../.."))
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(archive, tmp_path / "out")
    assert _files_under(tmp_path) == {"chain.tar", "out"}


def test_download_mvtec_from_a_file_url(tmp_path):
    archive = _archive(tmp_path / "mvtec.tar.xz")
    destination = tmp_path / "data"
    folders = download_mvtec(destination, ["bottle"], url=archive.as_uri(), sha256=sha256_of(archive))
    assert folders == [destination / "bottle"]
    assert _files_under(destination) == {"bottle", "bottle/train", "bottle/train/good", "bottle/train/good/000.png",
                                         "bottle/test", "bottle/test/crack", "bottle/test/crack/000.png",
                                         "license.txt"}
    # already there: nothing is fetched (the URL no longer exists)
    assert download_mvtec(destination, ["bottle"], url=(tmp_path / "gone.tar.xz").as_uri()) == folders


def test_download_mvtec_wrong_hash_leaves_nothing(tmp_path):
    archive = _archive(tmp_path / "mvtec.tar.xz")
    destination = tmp_path / "data"
    with pytest.raises(ChecksumError, match=f"expected {'f' * 64}, got {sha256_of(archive)}"):
        download_mvtec(destination, ["bottle"], url=archive.as_uri(), sha256="f" * 64)
    assert _files_under(destination) == set()


def test_download_mvtec_checks_categories(tmp_path):
    with pytest.raises(ValueError, match="unknown MVTec AD categories bottel"):
        download_mvtec(tmp_path, ["bottel"], url="file:///nonexistent")
    archive = _archive(tmp_path / "mvtec.tar.xz")
    with pytest.raises(ValueError, match="no category cable"):
        download_mvtec(tmp_path / "data", ["bottle", "cable"], url=archive.as_uri(), sha256=sha256_of(archive))


def test_cli(tmp_path, capsys):
    archive = _archive(tmp_path / "mvtec.tar.xz")
    destination = tmp_path / "data"
    assert main(["--data-root", str(destination), "--categories", "bottle",
                 "--url", archive.as_uri(), "--sha256", sha256_of(archive)]) == 0
    assert (destination / "bottle" / "train" / "good" / "000.png").is_file()
    assert main(["--data-root", str(destination), "--categories", "cable",
                 "--url", archive.as_uri(), "--sha256", "0" * 64]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err
