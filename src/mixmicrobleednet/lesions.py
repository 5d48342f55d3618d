"""Microbleed probabilities → binary mask → individual microbleeds and their table."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from .options import DEFAULT_THRESHOLD

#: Voxels touching by a face, edge or corner belong to the same microbleed.
CONNECTIVITY = np.ones((3, 3, 3), bool)


#: One row per microbleed, as written. Voxel indices are in NIfTI/ITK order (i, j, k = x, y, z of
#: the array on disk); world coordinates are RAS millimetres, as nibabel, FSLeyes and MNI coordinates
#: use. In memory a table has no world columns: with_world adds them where a table is written.
WORLD_COLUMNS = ["centroid_x_ras_mm", "centroid_y_ras_mm", "centroid_z_ras_mm"]
#: max_probability and mean_probability are the network's over the microbleed's voxels;
#: calibrated_probability is the model's mimic check's (mimics.py), empty for a model without one.
LESION_COLUMNS = ["lesion_id", "centroid_i", "centroid_j", "centroid_k", *WORLD_COLUMNS, "volume_mm3", "voxel_count",
                  "equivalent_diameter_mm", "max_probability", "mean_probability", "calibrated_probability"]
_MEASURED_COLUMNS = [column for column in LESION_COLUMNS if column not in WORLD_COLUMNS]
_INDEX_COLUMNS = ["centroid_i", "centroid_j", "centroid_k"]


@dataclass(frozen=True, kw_only=True)
class LesionSettings:
    """What counts as a microbleed: the same rule for the mask, the table and the counts."""

    threshold: float = DEFAULT_THRESHOLD  # a voxel is a microbleed voxel when p > threshold
    min_size_mm3: float = 0.0  # smaller connected components are dropped
    #: Components whose centre lies within this distance (mm) of the brain mask's edge are set
    #: aside (0: none, the seed's rule). Microbleeds lie in the brain; a dark rim where a mask cuts
    #: tissue is what the models mark most (the cards measure the rule). None: decided per case by
    #: how its brain mask was found (for_brain), 0 until then.
    edge_margin_mm: float | None = None

    def __post_init__(self):
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1): got {self.threshold}")
        if self.min_size_mm3 < 0:
            raise ValueError(f"minimum size must be 0 mm³ or more: got {self.min_size_mm3}")
        if self.edge_margin_mm is not None and self.edge_margin_mm < 0:
            raise ValueError(f"edge margin must be 0 mm or more: got {self.edge_margin_mm}")

    @property
    def margin_mm(self) -> float:
        return self.edge_margin_mm or 0.0

    def for_brain(self, extracted: bool, model_margin_mm: float) -> LesionSettings:
        """The rule for one case: an edge margin left open becomes the model's
        (ModelFolder.extracted_brain_edge_margin_mm) where the tool extracted the brain, else 0
        (skull-stripped scans, masks the user gave)."""
        if self.edge_margin_mm is not None:
            return self
        return replace(self, edge_margin_mm=model_margin_mm if extracted else 0.0)

    def describe(self) -> str:
        """The rule in a few words, for captions."""
        words = f"p > {self.threshold:g}, min size {self.min_size_mm3:g} mm³"
        return words + (f", centre {self.margin_mm:g} mm or more inside the brain" if self.margin_mm else "")


class MarkJudge(Protocol):
    """A second look at each component (mimics.MarkJudge): the probability that it is a microbleed
    from its voxel indices ((n, 3), z y x on the grid), and the cut under which it is set aside."""

    cut: float

    def probability(self, voxels: np.ndarray) -> float: ...


@dataclass(frozen=True)
class Lesions:
    """The microbleeds of one case: uint8 mask on the T2* grid and one table row per microbleed,
    placed by voxel indices on `grid`."""

    mask: np.ndarray  # uint8 0/1, (z, y, x)
    table: pd.DataFrame  # LESION_COLUMNS but the world columns (and the region's, once located)
    grid: sitk.Image  # the T2* grid the indices are on
    #: Components the edge margin set aside (LesionSettings.edge_margin_mm), measured as the table's.
    near_edge: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_MEASURED_COLUMNS))
    #: Components the mimic check set aside (calibrated_probability under its cut), measured as the table's.
    mimics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_MEASURED_COLUMNS))

    @property
    def count(self) -> int:
        return len(self.table)

    @property
    def total_volume_mm3(self) -> float:
        return float(self.table["volume_mm3"].sum())

    def centroids_lps(self, table: pd.DataFrame | None = None) -> np.ndarray:
        """The centroids of the table (or of `table`, one of this case's) in ITK's world (LPS mm)."""
        indices = (self.table if table is None else table)[_INDEX_COLUMNS].to_numpy(float)
        return np.array([self.grid.TransformContinuousIndexToPhysicalPoint(ijk.tolist()) for ijk in indices]
                        ).reshape(-1, 3)

    def with_world(self, table: pd.DataFrame | None = None) -> pd.DataFrame:
        """The table (or `table`) as written: RAS world coordinates after the voxel indices. The one
        place where a lesion's place turns from ITK's LPS into RAS."""
        table = (self.table if table is None else table).copy()
        ras = self.centroids_lps(table) * [-1, -1, 1]
        position = table.columns.get_loc("centroid_k") + 1
        for offset, column in enumerate(WORLD_COLUMNS):
            table.insert(position + offset, column, ras[:, offset])
        return table


def centroids_lps(table: pd.DataFrame) -> np.ndarray:
    """A written table's centroids (RAS columns) in ITK's world (LPS mm), one row per microbleed."""
    return table[WORLD_COLUMNS].to_numpy(float).reshape(-1, 3) * [-1, -1, 1]


def label_microbleeds(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a mask: (label array, number of microbleeds)."""
    return ndimage.label(mask > 0, CONNECTIVITY)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel, or None when there is none."""
    box = []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if occupied.size == 0:
            return None
        box.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    return tuple(box)


def near_edge(brain: np.ndarray, centre_zyx: np.ndarray, spacing_zyx: np.ndarray, margin_mm: float) -> bool:
    """Whether a voxel outside the brain (or the grid's border) lies within `margin_mm` of a point:
    only the ball around it is looked at, not a distance map of the whole grid."""
    reach = np.floor(margin_mm / spacing_zyx).astype(int) + 1
    lo = np.floor(centre_zyx).astype(int) - reach
    hi = np.ceil(centre_zyx).astype(int) + reach + 1
    offsets = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    within = sum(((o - c) * s) ** 2 for o, c, s in zip(offsets, centre_zyx, spacing_zyx)) <= margin_mm ** 2
    clipped = tuple(slice(max(a, 0), min(b, size)) for a, b, size in zip(lo, hi, brain.shape))
    in_brain = np.zeros(within.shape, bool)  # beyond the grid stays False: no brain
    in_brain[tuple(slice(c.start - a, c.stop - a) for c, a in zip(clipped, lo))] = brain[clipped]
    return bool((within & ~in_brain).any())


def extract_lesions(probabilities: np.ndarray, reference: sitk.Image, settings: LesionSettings = LesionSettings(),
                    brain: np.ndarray | None = None, judge: MarkJudge | None = None) -> Lesions:
    """Threshold, split into microbleeds, drop those under the minimum size, measure them, (with an
    edge margin) set aside those whose centre lies that close to the edge of `brain` (bool, the T2*
    grid), and (with a judge) set aside the rest whose calibrated probability is under its cut: each
    measured as the rest, in `near_edge` and `mimics`, so that a reader can check them.

    Components are labelled only inside the box that holds every voxel above the threshold: on a
    whole-head 512x512 grid that is a fraction of the volume."""
    if settings.margin_mm and brain is None:
        raise ValueError("an edge margin needs the brain mask")
    above = probabilities > settings.threshold
    mask = np.zeros(probabilities.shape, np.uint8)
    region = _bounding_box(above)
    rows, near, mimics = [], [], []
    if region is not None:
        labels, count = label_microbleeds(above[region])
        voxel_volume = float(np.prod(reference.GetSpacing()))
        voxel_counts = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        kept = np.flatnonzero(voxel_counts * voxel_volume >= settings.min_size_mm3) + 1
        boxes = ndimage.find_objects(labels, max_label=count)  # measure each microbleed in its box only
        offset = [s.start for s in region]
        spacing_zyx = np.array(reference.GetSpacing()[::-1])
        for old_label in kept:
            box = boxes[old_label - 1]
            in_lesion = labels[box] == old_label
            centre_zyx = np.add(ndimage.center_of_mass(in_lesion), [s.start + o for s, o in zip(box, offset)])
            voxels = int(voxel_counts[old_label - 1])
            volume = voxels * voxel_volume
            inside = probabilities[region][box][in_lesion]
            # lesion_id holds the component's label until _numbered numbers each table from 1
            row = [old_label, *centre_zyx[::-1].tolist(), volume, voxels, (6 * volume / np.pi) ** (1 / 3),
                   float(inside.max()), float(inside.mean()), np.nan]
            if settings.margin_mm and near_edge(brain, centre_zyx, spacing_zyx, settings.margin_mm):
                near.append(row)
                continue
            if judge is not None:
                row[-1] = judge.probability(np.argwhere(in_lesion) + [s.start + o for s, o in zip(box, offset)])
                if row[-1] < judge.cut:
                    mimics.append(row)
                    continue
            rows.append(row)
        mask[region] = labels > 0 if len(rows) == count else np.isin(labels, [row[0] for row in rows])
    return Lesions(mask, _numbered(rows), reference, _numbered(near), _numbered(mimics))


def _numbered(rows: list[list]) -> pd.DataFrame:
    """A lesion table of measured components, numbered from 1 in the order found."""
    table = pd.DataFrame(rows, columns=_MEASURED_COLUMNS).astype(
        {"lesion_id": int, "voxel_count": int, "calibrated_probability": float})
    table["lesion_id"] = np.arange(1, len(table) + 1)
    return table
