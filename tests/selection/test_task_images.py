"""A task's images as users have them: several sizes in one folder are brought to one working size (the
support set's most common), masks with their images, and the selection says so; a mask whose size differs
from its image is refused before any set is generated."""

import numpy as np
import pytest
from PIL import Image

from selection.config import SelectionConfig
from selection.evidence import pixel_truth
from selection.working_size import to_working_size, working_size

SIZE, OTHER = (64, 64), (80, 96)  # (H, W)


def _save(image: Image.Image, path, size) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((size[1], size[0]), Image.BILINEAR).save(path)


def _mixed_size_task(root, bottle):
    """Bottle images in the folder layout, most at SIZE, some support and one anomaly (with its mask) at
    OTHER; returns the task folder."""
    task = root / "mixed bottle"  # a space in the path, as users' folders have
    train = sorted((bottle / "train" / "good").glob("*.png"))[:30]
    for i, path in enumerate(train):
        _save(Image.open(path).convert("RGB"), task / "train" / "good" / path.name, OTHER if i % 3 == 0 else SIZE)
    for path in sorted((bottle / "test" / "good").glob("*.png"))[:6]:
        _save(Image.open(path).convert("RGB"), task / "test" / "good" / path.name, SIZE)
    for i, path in enumerate(sorted((bottle / "test" / "broken_large").glob("*.png"))[:6]):
        size = OTHER if i == 0 else SIZE
        _save(Image.open(path).convert("RGB"), task / "test" / "broken_large" / path.name, size)
        masks = task / "ground_truth" / "broken_large"
        masks.mkdir(parents=True, exist_ok=True)
        mask = Image.open(bottle / "ground_truth" / "broken_large" / f"{path.stem}_mask.png")
        mask.resize((size[1], size[0]), Image.NEAREST).save(masks / f"{path.stem}_mask.png")
    return task


def _config(task, tracking_uri, tmp_path, detectors=("patchcore",)) -> SelectionConfig:
    return SelectionConfig(task=f"folder:{task}", backbones=("mobilenet_v2",), detectors=detectors, ensemble="none",
                           generators=("cutpaste", "perlin"), n_anomalies=10, tracking_uri=tracking_uri,
                           store=str(tmp_path / "synthetic"), experiment="sizes", register=False)


def test_the_working_size_is_the_most_common_and_the_largest_of_a_tie():
    images = [np.zeros((*SIZE, 3), np.uint8)] * 3 + [np.zeros((*OTHER, 3), np.uint8)] * 2
    assert working_size(images) == SIZE
    assert working_size(images[2:]) == OTHER  # one each: the larger area
    resized, notes = to_working_size(images, SIZE, "support images")
    assert {image.shape for image in resized} == {(*SIZE, 3)}
    assert notes == ["2 of 5 support images resized to 64x64 px, the support set's most common size (2 sizes among them)"]
    assert to_working_size(images[:3], SIZE, "support images")[1] == []


def test_a_mask_follows_its_image_to_the_working_size_and_must_have_its_size(tmp_path):
    mask = np.zeros(OTHER, np.uint8)
    mask[:40, :48] = 255  # the top-left quarter
    Image.fromarray(mask).save(tmp_path / "m.png")
    images = [np.zeros((*SIZE, 3), np.uint8)] * 2
    truth = pixel_truth(images, [0, 1], [None, tmp_path / "m.png"], [SIZE, OTHER])
    expected = np.zeros(SIZE, bool)
    expected[:32, :32] = True
    np.testing.assert_array_equal(truth[1], expected)
    with pytest.raises(ValueError, match=r"mask .*m.png is 96x80 px, its image 64x64 px"):
        pixel_truth(images, [0, 1], [None, tmp_path / "m.png"], [SIZE, SIZE])


@pytest.mark.slow
def test_a_folder_of_mixed_sizes_is_selected_at_one_working_size_with_aligned_masks(mvtec_root, tracking_uri, tmp_path):
    from selection.pipeline import run_selection

    task = _mixed_size_task(tmp_path, mvtec_root / "bottle")
    result = run_selection(_config(task, tracking_uri, tmp_path))
    assert "10 of 30 support images resized to 64x64 px, the support set's most common size (2 sizes among them)" \
        in result.warnings
    assert "1 of 12 real validation images resized to 64x64 px, the support set's most common size (2 sizes " \
           "among them)" in result.warnings
    board = result.leaderboard.set_index("candidate")
    pretrained = board.loc["patchcore/mobilenet_v2/imagenet/early+mid/c0.1/p3/k1"]
    assert pretrained["real_auroc"] > 0.9 and pretrained["real_pixel_auroc"] > 0.8  # masks aligned with the maps
    for vs in result.validation_sets:
        images = vs.load_images()
        assert {image.shape for image in images} == {(*SIZE, 3)}
        normals = vs.manifest[vs.manifest["label"] == 0]
        resized = normals["source_image"].map(lambda path: Image.open(path).size != (SIZE[1], SIZE[0]))
        assert resized.any()  # 10 of 30 in the support set: the held-out part has some
        stored = normals["path"].str.startswith(str(vs.directory / "normals"))
        assert (stored == resized).all()  # resized normals live in the set, the others are referenced


def test_a_mask_of_another_size_than_its_image_is_refused_before_any_set_is_generated(mvtec_root, tracking_uri,
                                                                                      tmp_path, capsys):
    from selection.run import main

    task = _mixed_size_task(tmp_path, mvtec_root / "bottle")
    mask = next((task / "ground_truth" / "broken_large").glob("*.png"))
    Image.open(mask).resize((50, 50)).save(mask)
    store = tmp_path / "synthetic"
    code = main(["--task", f"folder:{task}", "--tracking-uri", tracking_uri, "--store", str(store),
                 "--backbones", "mobilenet_v2", "--detectors", "knn"])
    assert code == 2
    assert f"error: mask {mask} is 50x50 px, its image" in capsys.readouterr().err
    assert not store.exists()
