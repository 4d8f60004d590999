"""Bad input as users bring it: each case ends `python -m selection.run` with a short error naming the file or
value (exit 2) before any expensive work, and the MLflow store and the synthetic-set store are as they were.
Images in other modes are converted, and the selection says so."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from selection.config import SelectionConfig
from selection.evidence import gather_evidence

NON_UTF8 = os.fsdecode(b"bad\xffname")  # a name as a disk may hold it: not valid UTF-8


def _folder(root: Path, size: int = 64, normals: int = 30) -> Path:
    rng = np.random.default_rng(0)
    for folder, n in (("train/good", normals), ("test/good", 4), ("test/bad", 4)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
    return root


def _missing(root):
    return root / "nowhere"


def _empty(root):
    (root / "train" / "good").mkdir(parents=True)
    return root


def _not_an_image(root):
    (_folder(root) / "train" / "good" / "notes.png").write_text("a text file with an image's extension")
    return root


def _truncated(root):
    path = _folder(root) / "train" / "good" / "0.png"
    path.write_bytes(path.read_bytes()[:200])
    return root


def _too_small(root):
    return _folder(root, size=12)


def _non_utf8_file(root):
    (_folder(root) / "train" / "good" / "0.png").rename(root / "train" / "good" / f"{NON_UTF8}.png")
    return root


CASES = {  # folder made in the test's directory, extra options -> the message's pattern
    "missing folder": (_missing, [], r"error: task folder .*nowhere does not exist"),
    "empty folder": (_empty, [], r"error: no images in .*train/good \(extensions: "),
    "a text file named .png": (_not_an_image, [], r"error: cannot read image .*notes\.png: not a recognised image format"),
    "truncated image": (_truncated, [], r"error: cannot read image .*0\.png: "),
    "images too small for a generator": (_too_small, [], r"error: .* is 12x12 px: too small for CutPaste, which needs "
                                                         r"at least 32 px a side"),
    "file name not UTF-8": (_non_utf8_file, [], r"error: image path b'.*bad\\xffname\.png' is not valid UTF-8, and MLflow "
                                               r"records it as text: rename it"),
    "unknown backbone": (_folder, ["--backbones", "not_a_model"], r"error: unknown backbone 'not_a_model'; known: "),
    "unknown timm model": (_folder, ["--backbones", "timm:not_a_model"], r"error: unknown timm model 'not_a_model'"),
}
USAGE = {  # option -> argparse's message (exit 2, before anything is read)
    "store path not UTF-8": (["--store", f"/tmp/{NON_UTF8}"], r"argument --store: b'/tmp/bad\\xffname' is not valid "
                                                              r"UTF-8, and MLflow records it as text: rename it"),
    "task folder not UTF-8": (["--task", f"folder:{NON_UTF8}"], r"argument --task: b'folder:bad\\xffname' is not valid"),
    "unknown generator": (["--generators", "cutpaste,foo"], r"argument --generators: unknown generator 'foo'; known: "),
    "unknown detector kind": (["--detectors", "svdd"], r"error: unknown detector kind svdd; known: clip, knn, patchcore, vlad"),
}


@pytest.fixture
def recorded(tracking_uri):
    """The MLflow store with one run already in it; returns a function listing what the store holds."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("anomaly-selection")
    client.create_run(experiment, tags={"kept": "yes"})
    return lambda: sorted((run.info.run_id, run.info.status) for run in client.search_runs([experiment]))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_a_short_error_and_changes_no_store(case, tmp_path, tracking_uri, recorded, capsys):
    from selection.run import main

    make, options, message = CASES[case]
    task = make(tmp_path / "task")
    before = recorded()
    store = tmp_path / "synthetic"
    code = main(["--task", f"folder:{task}", "--tracking-uri", tracking_uri, "--store", str(store),
                 "--backbones", "mobilenet_v2", "--detectors", "knn", "--generators", "cutpaste", *options])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and re.match(message, last_line), last_line
    assert recorded() == before and not (store.exists() and any(store.iterdir()))


@pytest.mark.parametrize("case", USAGE)
def test_a_bad_option_is_a_usage_error_before_anything_is_read(case, capsys):
    from selection.run import parse_args

    options, message = USAGE[case]
    with pytest.raises(SystemExit) as exit_:
        parse_args(options)
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_grey_rgba_and_16_bit_images_are_converted_and_said(tmp_path):
    task = _folder(tmp_path / "task")
    good = task / "train" / "good"
    Image.open(good / "0.png").convert("L").save(good / "0.png")
    Image.open(good / "1.png").convert("RGBA").save(good / "1.png")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(good / "2.png")
    Image.open(task / "test" / "bad" / "0.png").convert("L").save(task / "test" / "bad" / "0.png")
    evidence = gather_evidence(SelectionConfig(task=f"folder:{task}", generators=("cutpaste",), n_anomalies=4,
                                               store=str(tmp_path / "synthetic")))
    assert evidence.notes == [
        "3 of 30 support images converted to 8-bit RGB: 1 16-bit grey (rescaled to 8 bits), 1 8-bit grey, "
        "1 RGBA (alpha dropped)",
        "1 of 8 real validation images converted to 8-bit RGB: 1 8-bit grey"]
    assert {image.shape for image in evidence.bank} == {(64, 64, 3)}
