"""Option values are checked where the command line is parsed: a usage error naming the option, before any
work."""

import re

import pytest


@pytest.mark.parametrize("command, option, message", [
    ("run", "--seed=-1", "argument --seed: must be at least 0, got -1"),
    ("run", "--seed=x", "argument --seed: expected an integer, got 'x'"),
    ("run", "--k=0", "argument --k: must be at least 1, got 0"),
    ("run", "--n-anomalies=0", "argument --n-anomalies: must be at least 1, got 0"),
    ("run", "--n-seed=0", "argument --n-seed: must be at least 1, got 0"),
    ("run", "--max-validation=1", "argument --max-validation: must be at least 2, got 1"),
    ("run", "--heldout-fraction=1", r"argument --heldout-fraction: must lie in \(0, 1\), got 1.0"),
    ("run", "--confidence=1.5", r"argument --confidence: must lie in \[0, 1\], got 1.5"),
    ("search", "--trials=0", "argument --trials: must be at least 1, got 0"),
    ("search", "--workers=0", "argument --workers: must be at least 1, got 0"),
])
def test_a_bad_option_value_is_a_usage_error_naming_the_option(command, option, message, capsys):
    from selection import run, search

    with pytest.raises(SystemExit) as exit_:
        {"run": run.parse_args, "search": search.parse_args}[command]([option])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_an_unreachable_tracking_server_fails_before_any_work_without_showing_its_password(tmp_path, capsys):
    from selection.run import main

    store = tmp_path / "synthetic"
    code = main(["--task", "folder:/nowhere-needed", "--tracking-uri", "http://user:secret@127.0.0.1:9/",
                 "--store", str(store), "--backbones", "mobilenet_v2", "--detectors", "knn"])
    error = capsys.readouterr().err
    assert code == 2 and "cannot use the MLflow store http://user:***@127.0.0.1:9/" in error
    assert "secret" not in error and not store.exists()


def test_a_validation_set_with_one_class_is_refused_before_any_set_is_generated(tmp_path, tracking_uri, capsys):
    import numpy as np
    from PIL import Image

    from selection.run import main

    rng = np.random.default_rng(0)
    for folder, n in (("train/good", 30), ("test/good", 5)):
        (tmp_path / "task" / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "task" / folder / f"{i}.png")
    store = tmp_path / "synthetic"
    code = main(["--task", f"folder:{tmp_path / 'task'}", "--tracking-uri", tracking_uri, "--store", str(store),
                 "--backbones", "mobilenet_v2", "--detectors", "knn"])
    assert code == 2 and "real validation set of folder:" in capsys.readouterr().err
    assert not store.exists()
