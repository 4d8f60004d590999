"""Task strings -> a support set of normal images and, where the data has one, a labelled validation set."""

import csv
import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

DATA_ROOT_ENV = "ANOMALY_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("data")
SET_DATA_ROOT = f"set --data-root or {DATA_ROOT_ENV}"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
NORMAL = "good"
UNKNOWN_DEFECT = "anomaly"  # defect type of anomalies in data sets that do not name one (VisA, ELPV)

VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "anomaly": 1}

# ELPV and the textiles have no train/test split. The fixed one: normals are ranked by the SHA-256 of their
# file names salted with this constant, and the first 20% (of each ELPV cell type, mono and poly) go to
# validation with every anomalous image; the other normals are the support set.
SPLIT_SALT = "swsa-elpv-split-v1"  # its name predates the textiles; changing it would move ELPV's split
ELPV_VALIDATION_FRACTION = 0.2
TEXTILE_VALIDATION_FRACTION = 0.2
FASHION_MNIST_SOURCE = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_SIDE = 64
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle-boot")


class TaskError(ValueError):
    """A task string or the data behind it is unusable."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect: str  # NORMAL for normals, else the defect type
    mask_path: Path | None = None  # pixel ground truth where the data has one


@dataclass(frozen=True)
class Task:
    name: str  # e.g. "mvtec/bottle"
    support: tuple[Path, ...]  # training normals, sorted
    validation: tuple[LabelledImage, ...] | None  # None when the data has no labelled set

    def subsample(self, max_support: int | None, max_validation: int | None, seed: int) -> "Task":
        """At most `max_support` support images and `max_validation` validation images (both classes kept)."""
        if max_support is not None and max_support < 1:
            raise TaskError(f"max_support must be at least 1, got {max_support}")
        if max_validation is not None and max_validation < 2:
            raise TaskError(f"max_validation must be at least 2 to keep both classes, got {max_validation}")
        # Separate streams, so the support sample does not change with max_validation and vice versa.
        support = self.support
        if max_support is not None and len(support) > max_support:
            picked = np.random.default_rng((seed, 0)).choice(len(support), max_support, replace=False)
            support = tuple(support[i] for i in sorted(picked.tolist()))
        validation = self.validation
        if validation is not None and max_validation is not None and len(validation) > max_validation:
            picked = _stratified_choice([item.label for item in validation], max_validation,
                                        np.random.default_rng((seed, 1)))
            validation = tuple(validation[i] for i in picked)
        return replace(self, support=support, validation=validation)


def _stratified_choice(labels: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """Sorted indices of `n` < len(labels) items: classes in proportion, each kept when there are two."""
    by_class = {label: [i for i, value in enumerate(labels) if value == label] for label in sorted(set(labels))}
    if len(by_class) == 1:
        quotas = {label: n for label in by_class}
    else:
        normals, anomalies = by_class[0], by_class[1]
        n_anomalous = min(max(round(n * len(anomalies) / len(labels)), 1), len(anomalies), n - 1)
        n_anomalous = max(n_anomalous, n - len(normals))
        quotas = {0: n - n_anomalous, 1: n_anomalous}
    picked = [i for label, members in by_class.items()
              for i in rng.choice(members, quotas[label], replace=False).tolist()]
    return sorted(picked)


def available_task_kinds() -> list[str]:
    return ["mvtec/<category>", "visa/<category>", "elpv", "textile", "fashion-mnist/<class>", "folder:<path>"]


def resolve_data_root(data_root: str | Path | None) -> Path:
    """--data-root, else $ANOMALY_DATA_ROOT, else ./data."""
    if data_root:
        return Path(data_root)
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def load_task(spec: str, data_root: str | Path | None = None) -> Task:
    if spec == "elpv":
        return _load_elpv()
    if spec == "textile":
        return _load_textile()
    if spec.startswith("folder:") and spec != "folder:":
        base = Path(spec.removeprefix("folder:"))
        if not base.is_dir():
            raise TaskError(f"task folder {base} does not exist")
        return _load_folder_layout(spec, base, strict=False)
    kind, _, category = spec.partition("/")
    if kind == "fashion-mnist" and category:
        return _load_fashion_mnist(category, resolve_data_root(data_root))
    if kind in ("mvtec", "visa") and category and "/" not in category and category not in (".", ".."):
        root = resolve_data_root(data_root)
        return _load_mvtec(root, category) if kind == "mvtec" else _load_visa(root, category)
    raise TaskError(f"unknown task {spec!r}; known kinds: {', '.join(available_task_kinds())}")


def _load_mvtec(root: Path, category: str) -> Task:
    download_hint = f"or download it with: python -m selection.download --data-root {root}"
    if not root.is_dir():
        raise TaskError(f"data root {root} does not exist; {SET_DATA_ROOT} to the MVTec AD folder, {download_hint}")
    base = root / category
    if not base.is_dir():
        raise TaskError(f"MVTec AD category {category!r} not found at {base}; "
                        f"{SET_DATA_ROOT} to the MVTec AD folder, {download_hint}")
    return _load_folder_layout(f"mvtec/{category}", base, strict=True)


def _load_folder_layout(name: str, base: Path, strict: bool) -> Task:
    """The MVTec AD layout: train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png.

    Strict (MVTec AD itself): test/ and a mask for every defect image are required. Otherwise both are optional.
    """
    support = _images_in(base / "train" / NORMAL)
    test = base / "test"
    if not test.is_dir():
        if strict:
            raise TaskError(f"{test} does not exist")
        return Task(name, support, None)
    validation = []
    for defect_folder in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
        defect = defect_folder.name
        for image in _images_in(defect_folder):
            if defect == NORMAL:
                validation.append(LabelledImage(image, 0, NORMAL))
                continue
            mask_folder = base / "ground_truth" / defect
            mask = _find_mask(mask_folder, image.stem, strict)
            if mask is None and strict:
                raise TaskError(f"mask missing for {image}: expected {mask_folder / image.stem}_mask.png")
            validation.append(LabelledImage(image, 1, defect, mask))
    if not validation:
        raise TaskError(f"no class folders with images in {test}")
    return Task(name, support, tuple(validation))


def _find_mask(folder: Path, stem: str, strict: bool) -> Path | None:
    candidates = [f"{stem}_mask.png"] if strict else [f"{stem}_mask.png", f"{stem}.png"]
    return next((folder / name for name in candidates if (folder / name).is_file()), None)


def _images_in(folder: Path) -> tuple[Path, ...]:
    if not folder.is_dir():
        raise TaskError(f"{folder} does not exist")
    images = tuple(sorted(
        p for p in folder.iterdir()
        # dot files include macOS "._name.png" resource forks, which are not images
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ))
    if not images:
        raise TaskError(f"no images in {folder} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    for image in images:
        if problem := not_utf8(image):  # MLflow records every image's path as text
            raise TaskError(f"image path {problem}")
    return images


def not_utf8(text) -> str | None:
    """Why `text` (a path or name, as a disk may spell it) cannot be recorded in MLflow, or None if it can."""
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        return f"{os.fsencode(text)!r} is not valid UTF-8, and MLflow records it as text: rename it"
    return None


def _load_visa(root: Path, category: str) -> Task:
    if not root.is_dir():
        raise TaskError(f"data root {root} does not exist; {SET_DATA_ROOT} to the VisA folder")
    table = root / "split_csv" / "1cls.csv"
    if not table.is_file():
        raise TaskError(f"{table} not found; {SET_DATA_ROOT} to the VisA folder")
    with table.open(newline="") as file:
        reader = csv.DictReader(file)
        missing = [column for column in VISA_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise TaskError(f"{table} lacks columns {', '.join(missing)}")
        rows = list(reader)
    known = sorted({row["object"] for row in rows})
    rows = [row for row in rows if row["object"] == category]
    if not rows:
        raise TaskError(f"VisA category {category!r} not in {table}; known: {', '.join(known)}")

    support, validation = [], []
    for row in rows:
        if row["label"] not in VISA_LABELS or row["split"] not in ("train", "test"):
            raise TaskError(f"{table}: unexpected split/label {row['split']!r}/{row['label']!r} for {row['image']}")
        label = VISA_LABELS[row["label"]]
        image = _listed_file(root, row["image"], table)
        if row["split"] == "train":
            if label == 0:
                support.append(image)
            continue
        if label == 0:
            validation.append(LabelledImage(image, 0, NORMAL))
        elif not row["mask"]:
            raise TaskError(f"{table}: no mask listed for anomalous image {row['image']}")
        else:
            validation.append(LabelledImage(image, 1, UNKNOWN_DEFECT, _listed_file(root, row["mask"], table)))
    if not support:
        raise TaskError(f"{table}: no normal train images for {category!r}")
    return Task(f"visa/{category}", tuple(sorted(support)), tuple(validation) or None)


def _listed_file(root: Path, relative: str, table: Path) -> Path:
    path = root / relative
    if not path.is_file():
        raise TaskError(f"{path} (listed in {table}) does not exist")
    return path


def _elpv_data_folder() -> Path:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise TaskError("task elpv needs the pip package elpv-dataset: pip install elpv-dataset")
    return Path(spec.origin).parent / "data"


def _load_elpv() -> Task:
    """ELPV solar cells: defect probability 0 is normal, 1 anomalous; 1/3 and 2/3 are ambiguous and left out."""
    data = _elpv_data_folder()
    labels = data / "labels.csv"
    if not labels.is_file():
        raise TaskError(f"{labels} not found: reinstall elpv-dataset")
    normals_by_type: dict[str, list[Path]] = {}
    anomalies = []
    for line_number, line in enumerate(labels.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            relative, probability_text, cell_type = line.split()
            probability = float(probability_text)
        except ValueError:
            raise TaskError(f"{labels}:{line_number}: expected 'path probability type', got {line!r}") from None
        if probability == 0.0:
            normals_by_type.setdefault(cell_type, []).append(data / relative)
        elif probability == 1.0:
            anomalies.append(data / relative)

    support, held_out = [], []
    for cell_type in sorted(normals_by_type):
        type_held_out, type_support = _hashed_split(normals_by_type[cell_type], ELPV_VALIDATION_FRACTION)
        held_out += type_held_out
        support += type_support
    validation = sorted(
        [LabelledImage(path, 0, NORMAL) for path in held_out]
        + [LabelledImage(path, 1, UNKNOWN_DEFECT) for path in anomalies],
        key=lambda item: item.path,
    )
    return Task("elpv", tuple(sorted(support)), tuple(validation))


def _hashed_split(paths, fraction: float) -> tuple[list[Path], list[Path]]:
    """(held out, rest): normals ranked by the SHA-256 of their salted file names, the first `fraction` held
    out. A hash, not an RNG, so no library update moves the split."""
    ranked = sorted(paths, key=lambda path: hashlib.sha256(f"{SPLIT_SALT}:{path.name}".encode()).hexdigest())
    n_held_out = round(fraction * len(ranked))
    return ranked[:n_held_out], ranked[n_held_out:]


def _load_fashion_mnist(category: str, data_root: Path) -> Task:
    """One class of Fashion-MNIST (Debian's dataset-fashion-mnist) against the other nine, as SWSA does with
    CUB and Flowers: that class's training images are the support set; the whole test set (the class normal,
    the rest anomalous) the validation set. The 28 px images are written once as 64 px PNGs (bilinear) under
    the data root: CutPaste's patches and scars need room."""
    if category in FASHION_MNIST_CLASSES:
        label = FASHION_MNIST_CLASSES.index(category)
    elif category.isdigit() and int(category) < len(FASHION_MNIST_CLASSES):
        label = int(category)
    else:
        raise TaskError(f"unknown Fashion-MNIST class {category!r}; classes: {', '.join(FASHION_MNIST_CLASSES)}")
    folder = data_root / f"fashion-mnist-{FASHION_MNIST_SIDE}px"
    train = _fashion_mnist_pngs("train", folder)
    test = _fashion_mnist_pngs("t10k", folder)
    name = f"fashion-mnist/{FASHION_MNIST_CLASSES[label]}"
    support = tuple(path for path, value in train if value == label)
    validation = tuple(LabelledImage(path, int(value != label), NORMAL if value == label else
                                     FASHION_MNIST_CLASSES[value]) for path, value in test)
    return Task(name, support, validation)


def _fashion_mnist_pngs(split: str, folder: Path) -> list[tuple[Path, int]]:
    """(PNG path, label) for every image of a split, writing the PNGs on first use."""
    images_file = FASHION_MNIST_SOURCE / f"{split}-images-idx3-ubyte.gz"
    labels_file = FASHION_MNIST_SOURCE / f"{split}-labels-idx1-ubyte.gz"
    if not images_file.is_file() or not labels_file.is_file():
        raise TaskError(f"Fashion-MNIST not found in {FASHION_MNIST_SOURCE}: apt-get install dataset-fashion-mnist")
    with gzip.open(labels_file) as stream:
        labels = np.frombuffer(stream.read(), np.uint8, offset=8)
    target = folder / split
    paths = [target / f"{index:05d}.png" for index in range(len(labels))]
    if not (target / "complete").is_file():
        with gzip.open(images_file) as stream:
            images = np.frombuffer(stream.read(), np.uint8, offset=16).reshape(len(labels), 28, 28)
        target.mkdir(parents=True, exist_ok=True)
        for path, image in zip(paths, images):
            Image.fromarray(image).resize((FASHION_MNIST_SIDE,) * 2, Image.BILINEAR).save(path)
        (target / "complete").touch()  # last: an interrupted export is redone
    return list(zip(paths, labels.tolist()))


def _load_textile() -> Task:
    """Simulated textiles (pip conformal-clip-data): nominal images are normal, local and global defects
    anomalous; a fixed hashed 20% of the nominal images joins the defects in the validation set."""
    try:
        import conformal_clip_data
    except ImportError:
        raise TaskError("task textile needs the pip package conformal-clip-data: "
                        "pip install conformal-clip-data") from None
    held_out, support = _hashed_split(_images_in(conformal_clip_data.nominal_dir()), TEXTILE_VALIDATION_FRACTION)
    validation = [LabelledImage(path, 0, NORMAL) for path in held_out]
    for defect, folder in (("local", conformal_clip_data.local_dir()), ("global", conformal_clip_data.global_dir())):
        validation += [LabelledImage(path, 1, defect) for path in _images_in(folder)]
    return Task("textile", tuple(sorted(support)), tuple(sorted(validation, key=lambda item: item.path)))
