import csv
import importlib.util
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from selection.tasks import (
    DATA_ROOT_ENV,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SOURCE,
    NORMAL,
    LabelledImage,
    Task,
    TaskError,
    available_task_kinds,
    load_task,
    resolve_data_root,
)


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)
    return path


# --- mvtec ------------------------------------------------------------------------------------------------


def test_mvtec_bottle_from_the_real_data(mvtec_root):
    task = load_task("mvtec/bottle", mvtec_root)
    assert task.name == "mvtec/bottle"
    assert len(task.support) == 209
    assert list(task.support) == sorted(task.support)
    assert len(task.validation) == 83
    anomalies = [item for item in task.validation if item.label == 1]
    assert len(anomalies) == 63
    assert Counter(item.defect for item in task.validation) == {
        NORMAL: 20, "broken_large": 20, "broken_small": 22, "contamination": 21}
    assert all(item.mask_path is not None and item.mask_path.is_file() for item in anomalies)
    assert all(item.mask_path is None for item in task.validation if item.label == 0)
    assert not set(task.support) & {item.path for item in task.validation}


def test_mvtec_data_root_from_the_environment(mvtec_root, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(mvtec_root))
    assert len(load_task("mvtec/bottle").support) == 209


def test_mvtec_missing_category_names_where_it_looked_and_the_download_helper(tmp_path):
    with pytest.raises(TaskError, match="'cable' not found") as error:
        load_task("mvtec/cable", tmp_path)
    assert str(tmp_path) in str(error.value)
    assert "--data-root" in str(error.value) and DATA_ROOT_ENV in str(error.value)
    assert "selection.download" in str(error.value)


def test_mvtec_missing_mask_is_an_error(tmp_path):
    _png(tmp_path / "toy" / "train" / "good" / "000.png")
    _png(tmp_path / "toy" / "test" / "good" / "000.png")
    _png(tmp_path / "toy" / "test" / "crack" / "000.png")
    with pytest.raises(TaskError, match="mask missing.*000_mask.png"):
        load_task("mvtec/toy", tmp_path)


# --- data root and task strings ---------------------------------------------------------------------------


def test_resolve_data_root_order(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert resolve_data_root(None) == Path("data")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert resolve_data_root("elsewhere") == Path("elsewhere")


def test_missing_data_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(TaskError, match="does not exist") as error:
        load_task("mvtec/bottle", missing)
    assert str(missing) in str(error.value) and DATA_ROOT_ENV in str(error.value)
    with pytest.raises(TaskError, match="does not exist"):
        load_task("visa/candle", missing)


@pytest.mark.parametrize("spec", ["imagenet/dog", "mvtec", "mvtec/", "mvtec/a/b", "folder:", "", "elpv/x"])
def test_unknown_task_lists_the_known_kinds(spec):
    with pytest.raises(TaskError, match="unknown task") as error:
        load_task(spec)
    assert all(kind in str(error.value) for kind in available_task_kinds())


# --- folder -----------------------------------------------------------------------------------------------


def _folder_tree(base: Path) -> Path:
    for i in range(3):
        _png(base / "train" / "good" / f"{i:03d}.png", i)
    _png(base / "train" / "good" / "003.JPG")
    (base / "train" / "good" / "notes.txt").write_text("not an image")
    _png(base / "test" / "good" / "a.png")
    _png(base / "test" / "scratch" / "b.png")
    _png(base / "test" / "scratch" / "c.png")
    _png(base / "test" / "dent" / "d.png")
    _png(base / "ground_truth" / "scratch" / "b_mask.png")
    _png(base / "ground_truth" / "dent" / "d.png")  # the <stem>.png mask form
    return base


def test_folder_task(tmp_path):
    base = _folder_tree(tmp_path / "parts")
    task = load_task(f"folder:{base}")
    assert task.name == f"folder:{base}"
    assert [p.name for p in task.support] == ["000.png", "001.png", "002.png", "003.JPG"]
    by_name = {item.path.name: item for item in task.validation}
    assert by_name == {
        "a.png": LabelledImage(base / "test" / "good" / "a.png", 0, NORMAL),
        "b.png": LabelledImage(base / "test" / "scratch" / "b.png", 1, "scratch",
                               base / "ground_truth" / "scratch" / "b_mask.png"),
        "c.png": LabelledImage(base / "test" / "scratch" / "c.png", 1, "scratch", None),
        "d.png": LabelledImage(base / "test" / "dent" / "d.png", 1, "dent", base / "ground_truth" / "dent" / "d.png"),
    }


def test_folder_without_test_has_no_validation_set(tmp_path):
    _png(tmp_path / "train" / "good" / "000.png")
    task = load_task(f"folder:{tmp_path}")
    assert task.validation is None and len(task.support) == 1


def test_folder_with_only_normals_in_test_is_allowed(tmp_path):
    _png(tmp_path / "train" / "good" / "000.png")
    _png(tmp_path / "test" / "good" / "001.png")
    assert [item.label for item in load_task(f"folder:{tmp_path}").validation] == [0]


def test_empty_train_good_is_an_error(tmp_path):
    (tmp_path / "train" / "good").mkdir(parents=True)
    (tmp_path / "train" / "good" / "readme.txt").write_text("")
    with pytest.raises(TaskError, match="no images in .*good"):
        load_task(f"folder:{tmp_path}")


def test_empty_defect_folder_is_an_error(tmp_path):
    _png(tmp_path / "train" / "good" / "000.png")
    (tmp_path / "test" / "crack").mkdir(parents=True)
    with pytest.raises(TaskError, match="no images in .*crack"):
        load_task(f"folder:{tmp_path}")


def test_missing_folder_and_missing_train_good(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        load_task(f"folder:{tmp_path / 'absent'}")
    with pytest.raises(TaskError, match="train/good does not exist"):
        load_task(f"folder:{tmp_path}")


# --- visa -------------------------------------------------------------------------------------------------


def _visa_tree(root: Path) -> Path:
    rows = []
    for obj in ("candle", "pcb1"):
        for i in range(4):
            rows.append((obj, "train", "normal", _png(root / obj / "Data/Images/Normal" / f"{i:03d}.JPG"), None))
        rows.append((obj, "test", "normal", _png(root / obj / "Data/Images/Normal" / "100.JPG"), None))
        for i in range(2):
            rows.append((obj, "test", "anomaly", _png(root / obj / "Data/Images/Anomaly" / f"{i:03d}.JPG"),
                         _png(root / obj / "Data/Masks/Anomaly" / f"{i:03d}.png")))
    (root / "split_csv").mkdir()
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["object", "split", "label", "image", "mask"])
        for obj, split, label, image, mask in rows:
            writer.writerow([obj, split, label, image.relative_to(root).as_posix(),
                             mask.relative_to(root).as_posix() if mask else ""])
    return root


def test_visa_task(tmp_path):
    root = _visa_tree(tmp_path)
    task = load_task("visa/candle", root)
    assert task.name == "visa/candle"
    assert task.support == tuple(root / "candle/Data/Images/Normal" / f"{i:03d}.JPG" for i in range(4))
    assert [(item.path.name, item.label, item.defect) for item in task.validation] == [
        ("100.JPG", 0, NORMAL), ("000.JPG", 1, "anomaly"), ("001.JPG", 1, "anomaly")]
    assert all(item.mask_path.is_file() for item in task.validation if item.label == 1)
    assert all("candle" in str(item.path) for item in task.validation)


def test_visa_unknown_category_lists_the_known_ones(tmp_path):
    with pytest.raises(TaskError, match="'cashew' not in .*candle, pcb1"):
        load_task("visa/cashew", _visa_tree(tmp_path))


def test_visa_without_split_csv(tmp_path):
    with pytest.raises(TaskError, match="1cls.csv not found"):
        load_task("visa/candle", tmp_path)


def test_visa_listed_image_missing(tmp_path):
    root = _visa_tree(tmp_path)
    (root / "candle/Data/Images/Normal/000.JPG").unlink()
    with pytest.raises(TaskError, match="000.JPG .*does not exist"):
        load_task("visa/candle", root)


# --- elpv -------------------------------------------------------------------------------------------------


def _elpv_labels() -> dict[str, float]:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        pytest.skip("the elpv-dataset package is not installed")
    labels = Path(spec.origin).parent / "data" / "labels.csv"
    return {line.split()[0]: float(line.split()[1]) for line in labels.read_text().splitlines() if line.strip()}


def test_elpv_matches_its_labels_file():
    labels = _elpv_labels()
    task = load_task("elpv")
    assert task.name == "elpv"
    normals = {name for name, p in labels.items() if p == 0.0}
    anomalies = {name for name, p in labels.items() if p == 1.0}

    def name(path):
        return f"images/{path.name}"

    assert {name(p) for p in task.support} | {name(i.path) for i in task.validation if i.label == 0} == normals
    assert {name(i.path) for i in task.validation if i.label == 1} == anomalies
    assert len(task.support) + len(task.validation) == len(normals) + len(anomalies)
    assert not {name(p) for p in task.support} & {name(i.path) for i in task.validation}
    assert all(labels[name(i.path)] == float(i.label) for i in task.validation)
    assert all(p.is_file() for p in task.support[:5])
    held_out = sum(1 for i in task.validation if i.label == 0)
    assert abs(held_out - 0.2 * len(normals)) <= 2
    assert (len(task.support), held_out, len(anomalies)) == (1206, 302, 715)


def test_elpv_split_is_deterministic():
    _elpv_labels()
    assert load_task("elpv") == load_task("elpv")


# --- subsample --------------------------------------------------------------------------------------------


def _toy_task(n_support=50, n_normal=40, n_anomalous=10) -> Task:
    validation = [LabelledImage(Path(f"n{i:03d}.png"), 0, NORMAL) for i in range(n_normal)]
    validation += [LabelledImage(Path(f"a{i:03d}.png"), 1, "crack") for i in range(n_anomalous)]
    return Task("toy", tuple(Path(f"s{i:03d}.png") for i in range(n_support)), tuple(validation))


def test_subsample_sizes_and_stratification():
    task = _toy_task()
    small = task.subsample(max_support=20, max_validation=10, seed=0)
    assert len(small.support) == 20 and set(small.support) <= set(task.support)
    assert list(small.support) == sorted(small.support)
    assert Counter(item.label for item in small.validation) == {0: 8, 1: 2}
    assert set(small.validation) <= set(task.validation)


def test_subsample_keeps_a_rare_class():
    task = _toy_task(n_normal=99, n_anomalous=1)
    assert Counter(item.label for item in task.subsample(None, 5, seed=3).validation) == {0: 4, 1: 1}
    task = _toy_task(n_normal=2, n_anomalous=98)
    assert Counter(item.label for item in task.subsample(None, 10, seed=3).validation) == {0: 1, 1: 9}


def test_subsample_is_seeded():
    task = _toy_task()
    assert task.subsample(20, 10, seed=1) == task.subsample(20, 10, seed=1)
    assert task.subsample(20, 10, seed=1) != task.subsample(20, 10, seed=2)
    # each part's sample does not depend on the other part's limit
    assert task.subsample(20, 10, seed=1).support == task.subsample(20, None, seed=1).support


def test_subsample_is_a_no_op_when_small_enough_or_unlimited():
    task = _toy_task()
    assert task.subsample(None, None, seed=0) == task
    assert task.subsample(50, 50, seed=0) == task
    no_labels = Task("plain", task.support, None)
    assert no_labels.subsample(10, 10, seed=0).validation is None


def test_subsample_refuses_limits_that_cannot_keep_both_classes():
    with pytest.raises(TaskError, match="max_validation"):
        _toy_task().subsample(None, 1, seed=0)
    with pytest.raises(TaskError, match="max_support"):
        _toy_task().subsample(0, None, seed=0)


def test_textile_task_from_its_pip_package():
    task = load_task("textile")
    assert len(task.support) == 800 and len(task.validation) == 1200
    defects = [item.defect for item in task.validation]
    assert defects.count(NORMAL) == 200 and defects.count("local") == 500 and defects.count("global") == 500
    assert all(item.label == (item.defect != NORMAL) for item in task.validation)
    assert not set(task.support) & {item.path for item in task.validation}
    assert load_task("textile") == task  # a fixed split


@pytest.mark.skipif(not FASHION_MNIST_SOURCE.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_fashion_mnist_one_class_against_the_rest(tmp_path):
    task = load_task("fashion-mnist/bag", tmp_path)
    assert task.name == "fashion-mnist/bag" and len(task.support) == 6000 and len(task.validation) == 10000
    assert sum(item.label == 0 for item in task.validation) == 1000  # the test set's bags
    assert {item.defect for item in task.validation if item.label} == set(FASHION_MNIST_CLASSES) - {"bag"}
    image = Image.open(task.support[0])
    assert image.size == (64, 64)  # upscaled from 28 px so that CutPaste fits
    assert load_task("fashion-mnist/8", tmp_path).support == task.support  # by index too, PNGs reused
    with pytest.raises(TaskError, match="unknown Fashion-MNIST class 'hat'"):
        load_task("fashion-mnist/hat", tmp_path)
