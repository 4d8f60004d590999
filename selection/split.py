"""The SWSA partition of a support set: seed images, held-out normals, and the detectors' normal bank."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SupportSplit:
    """Indices into the support set; the three parts are pairwise disjoint and cover it."""

    seed: tuple[int, ...]  # X_seed: the generators' source images
    heldout: tuple[int, ...]  # X_in: the synthetic validation set's normals
    bank: tuple[int, ...]  # what the detectors are fitted on


def split_support(
    n_support: int, n_seed: int = 20, heldout_fraction: float = 0.2, seed: int = 0
) -> SupportSplit:
    """Partition `n_support` images at random: `n_seed` seeds, a fraction held out, the rest the bank."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    n_heldout = max(1, round(heldout_fraction * n_support))
    n_bank = n_support - n_seed - n_heldout
    if n_seed < 1 or n_bank < 1:
        raise ValueError(
            f"support set of {n_support} images is too small for {n_seed} seed images, "
            f"{n_heldout} held-out normals and a non-empty normal bank"
        )
    order = np.random.default_rng(seed).permutation(n_support)
    return SupportSplit(
        seed=tuple(sorted(order[:n_seed].tolist())),
        heldout=tuple(sorted(order[n_seed : n_seed + n_heldout].tolist())),
        bank=tuple(sorted(order[n_seed + n_heldout :].tolist())),
    )
