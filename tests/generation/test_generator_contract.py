"""The contract every registered generator passes. A new generator joins by adding a fast configuration here."""

import json

import numpy as np
import pytest

from generation import create_generator, list_generators, request_digest

FAST_PARAMS = {  # "{tiny_...}" stands for a tiny local model of conftest.py
    "cut": {"model": "{tiny_sd_dir}", "steps": 6, "resolution": 32, "max_iterations": 2, "object_name": "thing"},
    "cutpaste": {},
    "diffstyle": {"model": "{tiny_ddpm_dir}", "steps": 4},
    "nsa": {},
    "perlin": {},
}


def _normal_images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(3)]


def test_every_registered_generator_is_under_contract():
    assert set(list_generators()) == set(FAST_PARAMS)


@pytest.fixture(params=sorted(FAST_PARAMS))
def generator(request):
    params = dict(FAST_PARAMS[request.param])
    if str(params.get("model", "")).startswith("{tiny_"):
        params["model"] = str(request.getfixturevalue(params["model"].strip("{}")))
    return create_generator(request.param, **params)


def test_output_has_the_promised_shapes_and_types(generator):
    normals = _normal_images()
    synthetic = generator.generate(normals, 5, seed=0)
    assert synthetic.generator == generator.name
    assert len(synthetic) == 5 and synthetic.seed == 0
    assert isinstance(synthetic.rejected, int) and synthetic.rejected >= 0
    for image, mask, source in zip(synthetic.images, synthetic.masks, synthetic.sources):
        assert 0 <= source < len(normals)
        assert image.dtype == np.uint8 and image.shape == normals[source].shape
        if mask is not None:
            assert mask.dtype == np.float32 and mask.shape == image.shape[:2]
            assert 0 <= mask.min() and mask.max() <= 1


def test_same_request_same_set_bit_for_bit(generator):
    first = generator.generate(_normal_images(), 4, seed=7)
    second = create_generator(generator.name, **generator.get_params()).generate(_normal_images(), 4, seed=7)
    assert first.digest == second.digest
    assert [image.tobytes() for image in first.images] == [image.tobytes() for image in second.images]
    assert [None if m is None else m.tobytes() for m in first.masks] == \
           [None if m is None else m.tobytes() for m in second.masks]
    assert first.sample_params == second.sample_params and first.sources == second.sources


def test_digest_is_known_before_generating(generator):
    normals = _normal_images()
    assert generator.digest(normals, 3, seed=1) == generator.generate(normals, 3, seed=1).digest


def test_recorded_parameters_are_json_and_rebuild_the_generator(generator):
    normals = _normal_images()
    synthetic = generator.generate(normals, 3, seed=0)
    json.dumps(synthetic.sample_params)
    rebuilt = create_generator(synthetic.generator, **json.loads(json.dumps(synthetic.params)))
    assert rebuilt.digest(normals, 3, seed=0) == synthetic.digest


def test_the_normal_images_are_left_untouched(generator):
    normals = _normal_images()
    generator.generate(normals, 3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(normals, _normal_images()))


@pytest.mark.parametrize("images, n, seed, message", [
    ([], 3, 0, "empty"),
    ([np.zeros((64, 64), np.uint8)], 3, 0, r"normal_images\[0\] must be a uint8 \(H, W, 3\)"),
    ([np.zeros((64, 64, 3), np.float32)], 3, 0, "uint8"),
    ([np.zeros((64, 64, 4), np.uint8)], 3, 0, "RGB"),
    ([np.zeros((64, 64, 3), np.uint8)], 0, 0, "n must be an integer >= 1, got 0"),
    ([np.zeros((64, 64, 3), np.uint8)], True, 0, "n must be an integer >= 1, got True"),
    ([np.zeros((64, 64, 3), np.uint8)], 3, -1, "seed must be an integer >= 0, got -1"),
    ([np.zeros((64, 64, 3), np.uint8)], 3, 1.0, "seed must be an integer >= 0, got 1.0"),
])
def test_bad_requests_are_refused_before_any_work(generator, images, n, seed, message):
    with pytest.raises(ValueError, match=message):
        generator.digest(images, n, seed)
    with pytest.raises(ValueError, match=message):
        generator.generate(images, n, seed)


@pytest.mark.parametrize("name", ["diffstyle", "cut"])
def test_half_precision_on_a_gpu_never_shares_a_digest_with_float32(name):
    normals = _normal_images()
    on_cpu, on_gpu = (create_generator(name, device=device) for device in ("cpu", "cuda"))
    assert on_cpu.get_params() == on_gpu.get_params()  # the device is how, not what, is generated...
    assert on_cpu.numerics() == {"precision": "float32"} and on_gpu.numerics() == {"precision": "float16"}
    assert on_cpu.digest(normals, 3, seed=0) != on_gpu.digest(normals, 3, seed=0)  # ...but it changes the numbers


def test_generators_without_a_precision_setting_keep_their_digest():
    normals = _normal_images()
    cutpaste = create_generator("cutpaste")
    assert cutpaste.numerics() == {}
    assert cutpaste.digest(normals, 3, seed=0) == request_digest("cutpaste", cutpaste.get_params(), 3, 0, normals)
