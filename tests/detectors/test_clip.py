"""The CLIP backbone family and zero-/few-shot CLIP detector, on a toy open_clip architecture with random weights
(tiny_models.register_tiny_clip): the mechanics against open_clip's own encoders, caching, maps, the visual
memory, saving, and the errors a user meets offline."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.exceptions import NotFittedError

from detectors import ClipDetector, FeatureCache, create_backbone, load_detector
from detectors.backbones import load_weights, save_weights
from detectors.features import _preprocess
from detectors.maps import anomaly_maps
from tiny_models import register_tiny_clip, save_tiny_clip_folder

TINY = f"clip:{register_tiny_clip()}"
NORMAL, ANOMALOUS = ("a photo of a bottle.",), ("a photo of a bottle with defect.",)
SIZE = 48


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def _detector(features=None, **params):
    return ClipDetector(**{"backbone": TINY, "weights": "random", "normal_prompts": NORMAL,
                           "anomalous_prompts": ANOMALOUS, **params}, features=features)


def _reference(images, normal, anomalous):
    """Image and patch anomalous probabilities computed with open_clip's encoders directly."""
    backbone = create_backbone(TINY, "random")
    clip, tokenizer = backbone.network.clip, backbone.network.tokenizer
    batch = _preprocess(backbone, images)
    with torch.inference_mode():
        image = torch.nn.functional.normalize(clip.encode_image(batch), dim=1)
        text = torch.nn.functional.normalize(clip.encode_text(tokenizer(list(normal) + list(anomalous))), dim=1)
        states = torch.stack([torch.nn.functional.normalize(text[:len(normal)].mean(0), dim=0),
                              torch.nn.functional.normalize(text[len(normal):].mean(0), dim=0)])
        clip.visual.output_tokens = True
        _, tokens = clip.visual(batch)
        clip.visual.output_tokens = False
        patches = torch.nn.functional.normalize(tokens @ clip.visual.proj, dim=2)
    image_probability = torch.softmax(100 * image @ states.T, dim=1)[:, 1]
    patch_probability = torch.softmax(100 * patches @ states.T, dim=2)[..., 1]
    return image_probability.double().numpy(), patch_probability.reshape(len(images), 4, 4), backbone


def test_zero_shot_scores_and_maps_are_clip_probabilities_of_the_anomalous_prompt():
    images = _images(3, 1)
    detector = _detector().fit([])
    scores, maps = detector.scores_and_maps(images)
    expected, patch_probability, backbone = _reference(images, NORMAL, ANOMALOUS)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_allclose(maps, anomaly_maps(patch_probability, backbone.input_size, (SIZE, SIZE)), atol=1e-5)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    swapped = _detector(normal_prompts=ANOMALOUS, anomalous_prompts=NORMAL).fit([])
    np.testing.assert_allclose(swapped.anomaly_scores(images), 1 - scores, atol=1e-6)  # higher = more anomalous


def test_a_prompt_ensemble_is_the_renormalised_mean_of_its_prompts():
    normal = ("a photo of a bottle.", "a cropped photo of a bottle.", "a dark photo of the bottle.")
    anomalous = ("a photo of a bottle with defect.", "a blurry photo of a damaged bottle.")
    images = _images(2, 2)
    detector = _detector(normal_prompts=normal, anomalous_prompts=anomalous).fit([])
    np.testing.assert_allclose(detector.anomaly_scores(images), _reference(images, normal, anomalous)[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(detector.text_, axis=1), 1, atol=1e-6)


def test_prompts_and_images_are_each_encoded_once():
    features = FeatureCache()
    images = _images(4, 3)
    first = _detector(features).fit([])
    towers = features.backbone(TINY, "random").network
    encoded = []
    encode_text = towers.clip.encode_text
    towers.clip.encode_text = lambda tokens: encoded.append(len(tokens)) or encode_text(tokens)
    first.scores_and_maps(images)
    assert features.forward_counts[TINY, "random"] == 4  # one pass gives the embedding and the patch tokens
    other = _detector(features, normal_prompts=NORMAL + ("a photo of a flawless bottle.",)).fit([])
    other.scores_and_maps(images)
    assert features.forward_counts[TINY, "random"] == 4  # another prompt: no image is encoded again
    assert encoded == [1]  # only the new prompt went through the text tower


def test_few_shot_adds_the_distance_to_the_normal_patch_memory():
    normals, others = _images(3, 4), _images(2, 5)
    zero_shot = _detector().fit(normals)
    few_shot = _detector(few_shot=True, visual_weight=0.25).fit(normals)
    assert few_shot.bank_.shape == (3 * 16, 32) and zero_shot.bank_.shape == (0, 32)
    text = zero_shot.anomaly_scores(normals + others)
    scores, maps = few_shot.scores_and_maps(normals + others)
    np.testing.assert_allclose(scores[:3], 0.75 * text[:3], atol=1e-6)  # their own patches are in the memory
    assert (scores[3:] > 0.75 * text[3:] + 1e-4).all()
    _, zero_maps = zero_shot.scores_and_maps(normals)
    np.testing.assert_allclose(maps[:3], 0.75 * zero_maps, atol=1e-5)
    with pytest.raises(ValueError, match="needs normal images"):
        _detector(few_shot=True).fit([])


def test_saved_and_loaded_it_scores_bit_for_bit_without_the_text_tower(tmp_path):
    images = _images(3, 6)
    detector = _detector(few_shot=True).fit(_images(2, 7))
    scores, maps = detector.scores_and_maps(images)
    detector.save(tmp_path / "clip")
    features = FeatureCache()
    features.backbone(TINY, "random").network.text_features = lambda prompts: pytest.fail("text tower ran")
    loaded = load_detector(tmp_path / "clip", features)
    assert isinstance(loaded, ClipDetector) and loaded.get_params() == detector.get_params()
    again_scores, again_maps = loaded.scores_and_maps(images)
    np.testing.assert_array_equal(again_scores, scores)
    np.testing.assert_array_equal(again_maps, maps)
    np.save(tmp_path / "clip" / "text.npy", np.zeros((3, 32), np.float32))
    with pytest.raises(ValueError, match="corrupt saved ClipDetector"):
        load_detector(tmp_path / "clip")


def test_unfitted_and_bad_hyper_parameters_are_refused_clearly():
    with pytest.raises(NotFittedError, match="fit"):
        _detector().anomaly_scores(_images(1, 0))
    for params, message in [({"backbone": "mobilenet_v2"}, "must be a CLIP backbone"),
                            ({"weights": "imagenet"}, "takes weights 'pretrained' or 'random'"),
                            ({"normal_prompts": "a photo"}, "normal_prompts must be a non-empty list"),
                            ({"anomalous_prompts": ()}, "anomalous_prompts must be a non-empty list"),
                            ({"few_shot": 1}, "few_shot must be True or False"),
                            ({"visual_weight": 1.5}, r"visual_weight must be a number in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            _detector(**params)


def test_a_hub_tag_offline_names_the_backbone_and_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"clip:ViT-B-16-plus-240@laion400m_e31.*HF_HUB_OFFLINE is set"):
        create_backbone("clip:ViT-B-16-plus-240@laion400m_e31", "pretrained")
    with pytest.raises(ValueError, match="unknown CLIP architecture 'NoSuchNet'"):
        create_backbone("clip:NoSuchNet@x", "pretrained")
    with pytest.raises(ValueError, match="has no pretrained tag 'nonsense'; known: laion400m_e31"):
        create_backbone("clip:ViT-B-16-plus-240@nonsense", "pretrained")
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint .* not found: /nowhere/model.safetensors"):
        create_backbone("clip:ViT-B-16-plus-240@/nowhere/model.safetensors", "pretrained")
    with pytest.raises(ValueError, match="names no pretrained weights"):
        create_backbone("clip:ViT-B-16-plus-240", "pretrained")
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json in the folder of backbone"):
        create_backbone("clip:local-dir:/nowhere", "pretrained")


def test_a_local_checkpoint_file_or_folder_loads_as_pretrained_weights_and_bundles(tmp_path):
    trained = create_backbone(TINY, "random")
    with torch.no_grad():  # weights that differ from the seeded random init
        for parameter in trained.network.clip.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    checkpoint = tmp_path / "tiny.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in trained.network.clip.state_dict().items()}, checkpoint)
    name = f"{TINY}@{checkpoint}"
    images = _images(2, 8)
    local = ClipDetector(backbone=name, weights="pretrained", normal_prompts=NORMAL, anomalous_prompts=ANOMALOUS)
    scores = local.fit([]).anomaly_scores(images)
    assert not np.allclose(scores, _detector().fit([]).anomaly_scores(images))
    features = FeatureCache()
    features.add_backbone(trained)
    trained.name, trained.weights = name, "pretrained"
    np.testing.assert_allclose(ClipDetector(**local.get_params(), features=features).fit([]).anomaly_scores(images),
                               scores, atol=1e-6)
    folder = save_tiny_clip_folder(tmp_path / "folder", trained.network.clip.state_dict())
    from_folder = ClipDetector(**{**local.get_params(), "backbone": f"clip:local-dir:{folder}"})
    np.testing.assert_allclose(from_folder.fit([]).anomaly_scores(images), scores, atol=1e-6)
    save_weights(features.backbone(name, "pretrained"), tmp_path / "bundle.safetensors")
    rebuilt = load_weights(tmp_path / "bundle.safetensors")
    assert (rebuilt.name, rebuilt.weights) == (name, "pretrained")
    for saved, loaded in zip(trained.network.state_dict().values(), rebuilt.network.state_dict().values()):
        torch.testing.assert_close(saved, loaded, rtol=0, atol=0)


def test_a_bundle_of_a_folder_model_loads_where_the_folder_is_gone(tmp_path):
    import shutil

    from detectors.bundle import load_bundle, save_bundle

    folder = save_tiny_clip_folder(tmp_path / "model")
    images = _images(2, 9)
    detector = _detector(backbone=f"clip:local-dir:{folder}", weights="pretrained").fit([])
    scores, maps = detector.scores_and_maps(images)
    save_bundle(detector, tmp_path / "bundle")
    shutil.rmtree(folder)
    loaded = load_bundle(tmp_path / "bundle")
    again_scores, again_maps = loaded.scores_and_maps(images)
    np.testing.assert_array_equal(again_scores, scores)
    np.testing.assert_array_equal(again_maps, maps)
