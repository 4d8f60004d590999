import pytest

from selection.split import split_support


@pytest.mark.parametrize("n_support,seed", [(209, 0), (209, 7), (60, 3)])
def test_parts_are_disjoint_and_cover_the_support_set(n_support, seed):
    split = split_support(n_support, n_seed=20, heldout_fraction=0.2, seed=seed)
    parts = [set(split.seed), set(split.heldout), set(split.bank)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(range(n_support))
    assert len(split.seed) == 20
    assert len(split.heldout) == round(0.2 * n_support)


def test_split_is_seeded():
    assert split_support(100, seed=1) == split_support(100, seed=1)
    assert split_support(100, seed=1) != split_support(100, seed=2)


def test_too_small_support_set_is_refused():
    with pytest.raises(ValueError, match="too small"):
        split_support(24, n_seed=20, heldout_fraction=0.2)
