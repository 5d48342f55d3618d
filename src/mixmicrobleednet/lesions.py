"""Microbleed probabilities → binary mask → individual microbleeds."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Voxels touching by a face, edge or corner belong to the same microbleed.
CONNECTIVITY = np.ones((3, 3, 3), bool)

#: nnU-Net's argmax over {background, CMB} is `p(CMB) > 0.5`; the same rule keeps the seed's masks.
DEFAULT_THRESHOLD = 0.5


def binary_mask(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """uint8 0/1 mask of voxels whose microbleed probability is above `threshold`."""
    return (probabilities > threshold).astype(np.uint8)


def label_microbleeds(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a mask: (label array, number of microbleeds)."""
    return ndimage.label(mask > 0, CONNECTIVITY)
