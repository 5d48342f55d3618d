"""Microbleed probabilities → binary mask."""

from __future__ import annotations

import numpy as np

#: nnU-Net's argmax over {background, CMB} is `p(CMB) > 0.5`; the same rule keeps the seed's masks.
DEFAULT_THRESHOLD = 0.5


def binary_mask(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """uint8 0/1 mask of voxels whose microbleed probability is above `threshold`."""
    return (probabilities > threshold).astype(np.uint8)
