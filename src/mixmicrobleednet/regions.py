"""Where each microbleed lies: its MARS region (Microbleed Anatomical Rating Scale), the region's
category (lobar, deep, infratentorial) and its hemisphere, from atlases in MNI space brought onto
the case by an affine registration.

The atlas is made once per run from three files of Debian's mricron-data (not shipped with the
package: their upstream licences differ; the image carries copies made at build time): the Colin27 brain
(ch2bet, the MNI template the atlases were drawn on) is registered onto the case, and every point of
the case is looked up in a MARS map on that template's grid, made from
- AAL (Tzourio-Mazoyer et al. 2002): cortex → frontal, parietal, temporal, occipital, insula; the
  caudate, putamen and pallidum → basal ganglia; thalamus; cerebellum and vermis → cerebellum;
- the JHU white-matter labels (ICBM-DTI-81, Mori et al. 2008): corpus callosum, internal and external
  capsule, the brainstem's tracts → brainstem, the other deep tracts (corona radiata, thalamic
  radiation, …) → deep white matter;
- every other voxel takes its nearest label: white matter under the cortex that the JHU core tracts
  do not reach is the lobe's (MARS counts juxtacortical white matter as lobar), the brainstem around
  its tracts is brainstem, and a point just outside the template's brain still gets a region.
The hemisphere is the sign of the point's MNI x (within 2 mm of the midline: midline).

A research measure, not a diagnosis: how well it agrees with known locations is measured on
phantoms (benchmarks/regions.py; README).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from . import layout
from .imaging import ChannelStack
from .lesions import Lesions
from .registration import mutual_information_method

#: MARS region -> category, in the order of the tables and of the summary's columns.
MARS_REGIONS: dict[str, str] = {
    "frontal": "lobar", "parietal": "lobar", "temporal": "lobar", "occipital": "lobar", "insula": "lobar",
    "basal ganglia": "deep", "thalamus": "deep", "internal capsule": "deep", "external capsule": "deep",
    "corpus callosum": "deep", "deep white matter": "deep",
    "brainstem": "infratentorial", "cerebellum": "infratentorial",
}
CATEGORIES = ("lobar", "deep", "infratentorial")
#: Within this distance (mm) of the MNI midline a microbleed has no side.
MIDLINE_MM = 2.0
#: The case's brain (its non-zero voxels) taken into MNI space by the affine found must be within this
#: factor of the template's brain: beyond, the registration failed or the scan is not a whole brain,
#: and no region is given.
MAX_VOLUME_RATIO = 2.0
#: The columns regions add to a lesion table.
REGION_COLUMNS = ["region", "region_category", "hemisphere", "mni_x_mm", "mni_y_mm", "mni_z_mm"]

# AAL label numbers (aal.nii.txt) -> MARS region. The cingulate, paracentral lobule and medial
# temporal structures go with the lobe they lie in, as MARS raters count them.
_AAL = {
    "frontal": [*range(1, 29), 31, 32, 33, 34, 69, 70], "insula": [29, 30],
    "parietal": [35, 36, *range(57, 69)], "occipital": [*range(43, 55)],
    "temporal": [37, 38, 39, 40, 41, 42, 55, 56, *range(79, 91)],
    "basal ganglia": [71, 72, 73, 74, 75, 76], "thalamus": [77, 78], "cerebellum": [*range(91, 117)],
}
# JHU white-matter label numbers (JHU-WhiteMatter-labels-1mm.nii.txt) -> MARS region; its other
# labels (all deep tracts) are deep white matter.
_JHU = {
    "brainstem": [1, 2, *range(7, 17)], "corpus callosum": [3, 4, 5],
    "internal capsule": [*range(17, 23)], "external capsule": [33, 34],
}


class AtlasError(Exception):
    """The atlas files are missing or unreadable: no case can get regions (the run stops)."""


class RegionError(Exception):
    """The atlas could not be placed on this case: its microbleeds get no region (its mask stands)."""


def atlas_folder() -> Path:
    return Path(os.environ.get(layout.ATLAS_DIR_VARIABLE, layout.ATLAS_DIR))


@dataclass(frozen=True)
class Atlas:
    template: sitk.Image  # the Colin27 T1 brain, MNI space (float32)
    regions: sitk.Image  # index into MARS_REGIONS + 1 on the template's grid, at every voxel


def check_atlas(folder: Path) -> dict[str, Path]:
    """The atlas files (kind -> path); AtlasError naming the missing ones and what to do."""
    paths = {kind: folder / name for kind, name in layout.ATLAS_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise AtlasError(f"microbleed regions need the MNI atlases of Debian's mricron-data, missing: "
                         f"{', '.join(missing)} (apt-get install mricron-data, or set {layout.ATLAS_DIR_VARIABLE} "
                         f"to a folder with {', '.join(layout.ATLAS_FILES.values())}; or run with --no-regions)")
    return paths


@functools.lru_cache(maxsize=2)
def load_atlas(folder: Path) -> Atlas:
    """The MARS map on the template grid (module docstring); a few seconds, once per run."""
    paths = check_atlas(folder)
    template = sitk.ReadImage(str(paths["template"]), sitk.sitkFloat32)
    # The JHU labels are on a 1 mm grid one voxel larger than AAL's: both go onto the template's grid.
    aal, jhu = (sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(paths[k])), template, sitk.Transform(),
                                                     sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
                for k in ("cortex_and_nuclei", "white_matter"))
    names = list(MARS_REGIONS)
    regions = np.zeros(aal.shape, np.uint8)
    regions[jhu > 0] = names.index("deep white matter") + 1
    for table, source in ((_JHU, jhu), (_AAL, aal)):  # AAL's grey matter wins where both label a voxel
        for region, numbers in table.items():
            regions[np.isin(source, numbers)] = names.index(region) + 1
    nearest = ndimage.distance_transform_edt(regions == 0, return_distances=False, return_indices=True)
    regions = regions[tuple(nearest)]
    image = sitk.GetImageFromArray(regions)
    image.CopyInformation(template)
    return Atlas(template, image)


@dataclass(frozen=True)
class AtlasPlacement:
    """The atlas on one case: an affine transform from the case's world (T2* grid, LPS) to MNI."""

    transform: sitk.AffineTransform
    channel: str  # the case's channel the template was registered to
    mutual_information: float  # Mattes MI after registration (ITK's sign: lower is better)
    volume_ratio: float  # the case's brain in MNI space (by the affine) over the template's brain
    seconds: float

    def as_record(self) -> dict:
        return {"atlas": "AAL + JHU white-matter labels on Colin27 (mricron-data), affine",
                "channel": self.channel, "matrix": [round(v, 6) for v in self.transform.GetMatrix()],
                "translation_mm": [round(v, 3) for v in self.transform.GetTranslation()],
                "centre_mm": [round(v, 3) for v in self.transform.GetCenter()],
                "mutual_information": round(self.mutual_information, 5), "volume_ratio": round(self.volume_ratio, 3),
                "seconds": round(self.seconds, 2)}


def _isotropic(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """The image on an isotropic grid of `spacing_mm` over the same extent (smoothed first)."""
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    sigma = [max(0.01, (spacing_mm - s) / 2) for s in image.GetSpacing()]  # ITK's filter wants every sigma > 0
    smooth = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         [spacing_mm] * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)


def place_atlas(image: sitk.Image, channel: str, atlas: Atlas) -> AtlasPlacement:
    """Register the template (moving) onto a brain-masked channel of the case (fixed): affine, Mattes
    mutual information (the channel may be T2*-weighted), on a 2 mm copy of the case, started from
    the brains' centres of mass."""
    started = time.perf_counter()
    fixed = _isotropic(sitk.Cast(image, sitk.sitkFloat32), 2.0)
    moving = atlas.template
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = mutual_information_method(fixed, sampling=0.1, learning_rate=1.0, iterations=300, smoothing_mm=2.0)
    method.SetInitialTransform(initial, inPlace=True)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:  # ITK's last line says why (e.g. too small an image to sample)
        raise RegionError(f"the atlas registration onto the {channel} failed: {str(exc).strip().splitlines()[-1]}") \
            from None
    ratio = _brain_ml(image) * abs(np.linalg.det(np.array(initial.GetMatrix()).reshape(3, 3))) / _brain_ml(moving)
    if not 1 / MAX_VOLUME_RATIO <= ratio <= MAX_VOLUME_RATIO:
        raise RegionError(f"the atlas registration onto the {channel} takes the case's brain to {ratio:.2f} times the "
                          f"template's brain (a brain: {1 / MAX_VOLUME_RATIO:.1f}-{MAX_VOLUME_RATIO:.1f}): not a whole "
                          f"brain, or the registration failed")
    return AtlasPlacement(sitk.AffineTransform(initial), channel, method.GetMetricValue(), ratio,
                          time.perf_counter() - started)


def _brain_ml(image: sitk.Image) -> float:
    return np.count_nonzero(sitk.GetArrayViewFromImage(image)) * float(np.prod(image.GetSpacing())) / 1000


def regions_at(points_mni: np.ndarray, atlas: Atlas) -> list[str]:
    """The MARS region at each point in MNI space (LPS mm, one per row)."""
    names = list(MARS_REGIONS)
    size = np.array(atlas.regions.GetSize())
    found = []
    for point in np.asarray(points_mni, float).reshape(-1, 3):
        index = np.clip(np.round(atlas.regions.TransformPhysicalPointToContinuousIndex(point.tolist())), 0, size - 1)
        found.append(names[atlas.regions[[int(i) for i in index]] - 1])
    return found


def locate(points_lps: np.ndarray, placement: AtlasPlacement, atlas: Atlas) -> pd.DataFrame:
    """REGION_COLUMNS for points in the case's world (LPS mm, one per row): the one function that
    says where a microbleed is, for the lesion table, the counts and the QC picture alike."""
    points_lps = np.asarray(points_lps, float).reshape(-1, 3)
    mni = np.array([placement.transform.TransformPoint(p.tolist()) for p in points_lps]).reshape(-1, 3)
    rows = []
    for region, (x, y, z) in zip(regions_at(mni, atlas), mni):
        side = "midline" if abs(x) <= MIDLINE_MM else ("left" if x > 0 else "right")  # LPS: +x is the left
        rows.append([region, MARS_REGIONS[region], side, -x, -y, z])  # MNI coordinates as RAS, as the table's
    return pd.DataFrame(rows, columns=REGION_COLUMNS)


def counts(table: pd.DataFrame) -> dict:
    """Per case: microbleeds per category and per MARS region, and whether all are strictly lobar
    (at least one, none elsewhere: what the Boston criteria 2.0 count)."""
    by_region = table["region"].value_counts() if len(table) else pd.Series(dtype=int)
    regions = {r: int(by_region.get(r, 0)) for r in MARS_REGIONS}
    categories = {c: sum(n for r, n in regions.items() if MARS_REGIONS[r] == c) for c in CATEGORIES}
    return {"categories": categories, "regions": regions,
            "strictly_lobar": categories["lobar"] > 0 and categories["lobar"] == len(table)}


def _count_column(name: str) -> str:
    return f"count_{name.replace(' ', '_')}"


#: The per-case columns of summary.csv (and, the categories, of cohort.tsv), in this order.
CATEGORY_COLUMNS = [_count_column(c) for c in CATEGORIES] + ["strictly_lobar"]
SUMMARY_COLUMNS = CATEGORY_COLUMNS + [_count_column(r) for r in MARS_REGIONS]


def summary_values(located: dict | None) -> dict:
    """SUMMARY_COLUMNS from a record's regions (counts); no values for a case without them."""
    if not located or "error" in located:
        return dict.fromkeys(SUMMARY_COLUMNS)
    counted = {**located["categories"], **located["regions"]}
    return {**{_count_column(k): n for k, n in counted.items()},
            "strictly_lobar": located["strictly_lobar"]}


def describe(located: dict) -> str:
    """One log line: the counts per category and how the atlas was placed (or why not)."""
    if "error" in located:
        return f"no regions: {located['error']}"
    placement = located["placement"]
    where = f"atlas registered to the {placement['channel']} in {placement['seconds']:.1f} s" if placement \
        else "no microbleed to place"
    return ", ".join(f"{n} {c}" for c, n in located["categories"].items()) + \
        (" (strictly lobar)" if located["strictly_lobar"] else "") + f"; {where}"


def locate_lesions(stack: ChannelStack, lesions: Lesions, atlas: Atlas) -> tuple[Lesions, dict]:
    """The case's lesions with REGION_COLUMNS added to their table, and the record of where they
    are (the atlas placement and the counts). The atlas is placed only when there is a microbleed:
    on the T1 when the model reads one (the template is a T1), else on the T2*. When it cannot be
    placed, the columns stay empty and the record says why (the mask and the table stand)."""
    placement = None
    located = pd.DataFrame(columns=REGION_COLUMNS, index=lesions.table.index)
    if lesions.count:
        channel = layout.ATLAS_CHANNEL if layout.ATLAS_CHANNEL in stack.alignment else layout.REFERENCE_CHANNEL
        try:
            placement = place_atlas(stack.channel_image(channel), channel, atlas)
        except RegionError as exc:
            return replace(lesions, table=pd.concat([lesions.table, located], axis=1)), {"error": str(exc)}
        located = locate(lesions.centroids_lps(), placement, atlas)
    table = pd.concat([lesions.table, located], axis=1)
    return replace(lesions, table=table), {"placement": placement.as_record() if placement else None, **counts(table)}
