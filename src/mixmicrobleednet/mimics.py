"""A second look at each mark: does the T2* scan around it look like a microbleed or like a mimic?

The network marks veins and the brain's edge as well as microbleeds; what tells them apart is the
dark spot on the T2* scan: a microbleed's ends where it ends, round; a vein's runs on along the vessel.
Each mark is measured (mark_features) and its model's mimic check (modelfolder.MimicCheck, a logistic
regression fitted on validation draws) turns the measures into the probability that it is a
microbleed, the lesion table's calibrated_probability; a mark under the check's cut is set aside
(lesions.extract_lesions). The features:
- dark extent: the T2* voxels darker than half-way between the mark's darkest voxel and the brain's
  median around it (a 15 mm box), connected to that voxel inside the brain; the farthest of them from
  the mark's centre, over the mark's equivalent radius.
- blobness: the smallest over the largest eigenvalue of the T2* Hessian at the mark's centre (Gaussian
  scale 0.6 x the radius, at least 0.8 mm): near 1 for a dark ball, near 0 for a tube, below 0 elsewhere.
- elongation of the mark itself (its voxels' spread, largest over smallest axis) and its radius.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .lesions import CONNECTIVITY
from .modelfolder import MimicCheck

BOX_MM = 15.0  # how far around a mark its dark spot is followed


def _hessian_eigenvalues(t2s: np.ndarray, voxel: np.ndarray, spacing: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Eigenvalues (ascending, per mm²) of the Gaussian-smoothed Hessian at `voxel`, computed on a crop."""
    sigma = np.maximum(sigma_mm / spacing, 0.7)  # below 0.7 voxels a Gaussian derivative is undersampled
    half = np.ceil(3 * sigma + 2).astype(int)
    lo, hi = np.maximum(voxel - half, 0), np.minimum(voxel + half + 1, t2s.shape)
    crop = t2s[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32)
    at = tuple(voxel - lo)
    hessian = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            value = ndimage.gaussian_filter(crop, sigma, order=order, mode="nearest")[at] / (spacing[i] * spacing[j])
            hessian[i, j] = hessian[j, i] = value
    return np.linalg.eigvalsh(hessian)


def _dark_extent_mm(t2s: np.ndarray, brain: np.ndarray, centre: np.ndarray, voxel: np.ndarray, darkest: float,
                    spacing: np.ndarray) -> float:
    """How far (mm) from `centre` the half-depth dark region connected to `voxel` (the mark's darkest)
    reaches, inside the brain."""
    reach = np.ceil(BOX_MM / spacing).astype(int)
    lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, t2s.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    region, in_brain = t2s[box].astype(np.float32), brain[box]
    background = float(np.median(region[in_brain] if in_brain.any() else region))
    dark = (region < (darkest + background) / 2) & in_brain
    components, _ = ndimage.label(dark, CONNECTIVITY)
    inside = voxel - lo
    if np.any(inside < 0) or np.any(inside >= components.shape):  # a mark wider than the box
        return BOX_MM
    own = components[tuple(inside)]
    if own == 0:  # the darkest voxel lies outside the brain mask
        return 0.0
    return float(np.linalg.norm((np.argwhere(components == own) - (centre - lo)) * spacing, axis=1).max())


def mark_features(t2s: np.ndarray, brain: np.ndarray, voxels: np.ndarray, spacing: np.ndarray) -> dict[str, float]:
    """The features of one mark (modelfolder.MIMIC_FEATURES, and the radius and extent in mm they come
    from): `voxels` its (n, 3) voxel indices on the T2* grid, `t2s` the scan as read (not brain-masked),
    `brain` the case's brain mask, `spacing` in the arrays' (z, y, x) order."""
    radius = (3 * len(voxels) * np.prod(spacing) / (4 * np.pi)) ** (1 / 3)
    values = t2s[tuple(voxels.T)]
    darkest = voxels[np.argmin(values)]
    # the mark's voxel nearest its centroid: where a ball's Hessian is a ball's (a flat-bottomed
    # mark's darkest voxel may lie on its rim)
    centre = voxels[np.argmin(np.linalg.norm((voxels - voxels.mean(0)) * spacing, axis=1))]
    eigenvalues = _hessian_eigenvalues(t2s, centre, spacing, max(0.6 * radius, 0.8))
    spread = np.cov((voxels * spacing).T) if len(voxels) > 1 else np.zeros((3, 3))
    axes = np.linalg.eigvalsh(spread + np.diag(spacing ** 2 / 12))  # a voxel's own extent
    extent = _dark_extent_mm(t2s, brain, centre, darkest, float(values.min()), spacing)
    return {"radius_mm": float(radius), "extent_mm": extent,
            "log_extent_ratio": float(np.log(max(extent / radius, 0.3))),
            "blobness": float(eigenvalues[0] / eigenvalues[2]) if eigenvalues[2] > 0 else -1.0,
            "log_elongation": float(0.5 * np.log(axes[2] / axes[0])), "log_radius_mm": float(np.log(radius))}


class MarkJudge:
    """One case's mimic check: the probability that a mark (its voxel indices) is a microbleed, and
    the cut under which it is set aside (lesions.extract_lesions)."""

    def __init__(self, check: MimicCheck, t2s: np.ndarray, brain: np.ndarray, spacing_zyx: np.ndarray):
        self.check, self.t2s, self.brain, self.spacing = check, t2s, brain, np.asarray(spacing_zyx, float)

    @property
    def cut(self) -> float:
        return self.check.cut

    @classmethod
    def on_scan(cls, check: MimicCheck, t2s: sitk.Image, brain: np.ndarray) -> MarkJudge:
        """The check on a T2* scan as read (its intensities around each mark) and its brain mask."""
        return cls(check, sitk.GetArrayFromImage(t2s), brain, np.array(t2s.GetSpacing()[::-1]))

    def probability(self, voxels: np.ndarray) -> float:
        return self.check.probability(mark_features(self.t2s, self.brain, voxels, self.spacing))
