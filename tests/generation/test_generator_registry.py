import numpy as np
import pytest

from generation import (
    CutPaste,
    Generator,
    SyntheticSet,
    create_generator,
    list_generators,
    register_generator,
    registry,
)


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(registry, "_GENERATORS", dict(registry._GENERATORS))


def test_cutpaste_is_registered_and_built_with_its_params():
    assert "cutpaste" in list_generators()
    generator = create_generator("cutpaste", variant="scar")
    assert isinstance(generator, CutPaste)
    assert generator.get_params()["variant"] == "scar"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown generator 'cutpast'.*cutpaste"):
        create_generator("cutpast")


def test_a_new_generator_plugs_in_with_one_decorator(isolated_registry):
    @register_generator
    class Copy(Generator):
        name = "copy"

        def __init__(self, *, strength: float = 1.0):
            self.strength = strength

        def generate(self, normal_images, n, seed):
            digest = self.digest(normal_images, n, seed)
            return SyntheticSet(generator=self.name, params=self.get_params(), seed=seed, digest=digest,
                                images=[normal_images[0]] * n, masks=[None] * n, sources=[0] * n,
                                sample_params=[{}] * n, rejected=0)

    generator = create_generator("copy", strength=0.5)
    assert "copy" in list_generators()
    assert generator.get_params() == {"strength": 0.5}
    assert repr(generator) == "Copy(strength=0.5)"
    image = np.zeros((4, 4, 3), np.uint8)
    assert generator.generate([image], 2, 0).digest == generator.digest([image], 2, 0)


def test_a_name_cannot_be_registered_twice(isolated_registry):
    with pytest.raises(ValueError, match="already registered"):
        @register_generator
        class Impostor(CutPaste):
            pass
