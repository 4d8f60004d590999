"""The synthetic-set store under damage: a stored set whose files changed or went missing is found by its
checksums and generated again, with a warning; a disk that fills while a set is written leaves nothing
half-written behind."""

import errno

import numpy as np
import pytest
from PIL import Image

from selection.validation_set import build_validation_set


@pytest.fixture
def request_set(mvtec_root, tmp_path):
    """build_validation_set for a small CutPaste request on bottle images, into tmp_path/store."""
    paths = sorted((mvtec_root / "bottle" / "train" / "good").glob("*.png"))[:10]
    images = [np.asarray(Image.open(path).convert("RGB").resize((64, 64))) for path in paths[:4]]

    def build():
        return build_validation_set(tmp_path / "store", "cutpaste", seed_images=images, seed_paths=paths[:4],
                                    heldout_paths=paths[4:], n_anomalies=4, seed=0)

    return build


@pytest.mark.parametrize("damage, problem", [
    (lambda path: path.write_bytes(path.read_bytes()[:-10]), "images/anomaly_0001.png changed"),
    (lambda path: path.unlink(), "images/anomaly_0001.png missing"),
])
def test_a_damaged_stored_set_is_generated_again_with_a_warning(request_set, damage, problem):
    first = request_set()
    anomaly = first.directory / "images" / "anomaly_0001.png"
    original = anomaly.read_bytes()
    assert request_set().reused  # intact: reused
    damage(anomaly)
    with pytest.warns(UserWarning, match=f"stored synthetic set .*{first.digest} is damaged \\({problem}\\)"):
        again = request_set()
    assert not again.reused and again.digest == first.digest
    assert anomaly.read_bytes() == original  # the same request makes the same set
    assert request_set().reused


def test_a_disk_filling_while_a_set_is_written_leaves_nothing_behind(request_set, tmp_path, monkeypatch):
    save, saved = Image.Image.save, []

    def save_until_the_disk_is_full(image, path, *args, **kwargs):
        if len(saved) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        saved.append(path)
        return save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError, match="No space left on device"):
        request_set()
    assert saved and not any((tmp_path / "store").iterdir())  # no set, no staging folder
    monkeypatch.undo()
    assert not request_set().reused  # the store still works once there is room


def test_a_full_disk_ends_the_command_with_a_short_error(mvtec_root, tracking_uri, tmp_path, monkeypatch, capsys):
    from selection.run import main

    def full(image, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Image.Image, "save", full)
    code = main(["--task", "mvtec/bottle", "--data-root", str(mvtec_root), "--max-support", "40", "--max-validation",
                 "10", "--n-anomalies", "4", "--backbones", "mobilenet_v2", "--detectors", "knn", "--generators",
                 "cutpaste", "--tracking-uri", tracking_uri, "--store", str(tmp_path / "store")])
    assert code == 1
    last_line = capsys.readouterr().err.splitlines()[-1]  # MLflow's own log lines come first
    assert last_line.startswith("error: [Errno 28] No space left on device: ") and "anomaly_0000.png" in last_line
    assert not any((tmp_path / "store").iterdir())


def test_a_manifest_that_leads_out_of_its_set_is_not_followed(request_set):
    import json

    import pandas as pd

    from selection.records import RecordError, anomalies
    from selection.validation_set import CHECKSUMS, _checksums

    stored = request_set()
    manifest = pd.read_csv(stored.directory / "manifest.csv", keep_default_na=False)
    manifest.loc[manifest["label"] == 1, "path"] = "/etc/hostname"
    manifest.to_csv(stored.directory / "manifest.csv", index=False)
    (stored.directory / CHECKSUMS).write_text(json.dumps(_checksums(stored.directory)))  # a consistent forgery
    with pytest.raises(RecordError, match="names /etc/hostname, outside the set"):
        anomalies(stored.directory)  # the dashboard's gallery
    with pytest.warns(UserWarning, match="manifest.csv names /etc/hostname, outside the set\\): generating it again"):
        again = request_set()
    assert not again.reused and "/etc/hostname" not in set(again.manifest["path"])
