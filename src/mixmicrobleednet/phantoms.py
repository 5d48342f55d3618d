"""Synthetic microbleed phantoms in the seed's layout.

Anatomy comes from the ICBM152 2009a template (T1, grey- and white-matter maps) that ships inside
nilearn, so nothing is downloaded. Each case warps the template with a random similarity
transform, samples it on one of three VALDO-like acquisition grids, gives it T1/T2/T2* tissue
contrast, adds mimics (veins, symmetric basal-ganglia iron, sulcal CSF that the template already
has), microbleeds that bloom (largest and darkest on T2*, smaller on T2, faint on T1), a bias field,
Rician noise, brain masking, and a random intensity scale and dtype.

Microbleeds are rendered directly on the T2* grid with sub-voxel sampling, so thick slices get
partial volume; the label is the T2* extent (VALDO raters annotated on T2*). Each microbleed's
location (MARS region and category) is the region map of regions.py (AAL and the JHU white-matter
labels, from Debian's mricron-data) at its true place in the template, which is in MNI space.

Varied phantoms (`varied=True`, `phantoms --varied`) draw mimics and contrast from wide
distributions instead (#16: what tells a mimic from a microbleed, not one look): veins of any
calibre, length, curvature and orientation with branches, pallidal calcification symmetric or not,
dentate calcification, deep grey-matter iron, signal loss near air, per-channel contrast and noise
scaled at random, SWI-like T2* (darker veins and microbleeds), and half of the cases masked loosely
as a brain extraction leaves them (CSF and a rim of the Colin27 head up to 6 mm beyond the brain).
`loose_masks=True` (`phantoms --loose-masks`) masks every case so, in any look: the scans a model
meets after the tool's own brain extraction (#15). `superficial=True` (`phantoms --superficial`)
also draws superficial cortical microbleeds (#32: centre 1-3 mm under the brain's surface, in lobar
cortex, 2-6 mm; where cerebral amyloid angiopathy bleeds), which the other pools keep 4 mm away from.

Raw twins (`raw=True`, `phantoms --raw`): the same subject, microbleeds and T2* acquisition as
straight from the scanner: not skull-stripped (the Colin27 head from Debian's mricron-data around
the brain, in each channel's contrast, and noise in the background) and T1/T2 on grids of their own
(1 mm, oblique), the subject moved between scans by a random rigid transform (up to 10°, 10 mm).
"""

from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from . import layout, regions
from .device import in_processes
from .files import write_image_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Acquisition:
    """One cohort's T2* acquisition: voxel spacing as (slice, row, column) in mm."""

    name: str
    spacing_zyx: tuple[float, float, float]
    noise: float  # Rician sigma relative to white-matter signal


#: Three acquisitions with the voxel sizes of the VALDO 2021 Task 2 cohorts.
COHORTS: dict[str, Acquisition] = {
    a.name: a
    for a in (
        Acquisition("highres3d", (0.8, 0.49, 0.49), noise=0.045),
        Acquisition("thickslice", (3.5, 0.45, 0.45), noise=0.035),
        Acquisition("lowres", (3.0, 1.0, 1.0), noise=0.025),
        # Not a VALDO cohort: a voxel size that no training phantom has, for held-out sets.
        Acquisition("midslice", (2.0, 0.6, 0.6), noise=0.03),
    )
}
#: The acquisitions that take turns when none are named.
VALDO_COHORTS = ("highres3d", "thickslice", "lowres")

# Relative signal of (white matter, grey matter, CSF) per channel, roughly 3T values.
_TISSUE_SIGNAL = {"T1": (1.0, 0.62, 0.22), "T2": (0.45, 0.62, 1.0), "T2S": (0.55, 0.70, 0.92)}
# How far each channel's microbleed extends relative to T2* (blooming) and how dark its core is.
_BLOOM_RADIUS = {"T1": 0.5, "T2": 0.7, "T2S": 1.0}
_BLEED_CONTRAST = {"T1": 0.12, "T2": 0.55, "T2S": 0.85}
# How much each mimic darkens each channel (at full voxel fraction). Veins and flow voids: dark on
# T2* and T2, slightly on T1. Calcification or iron in the globus pallidus and the dentate nucleus,
# iron in the other deep grey matter: dark on T2*, a little on T2, none on T1. Susceptibility
# artefacts near air (frontal sinus, temporal bone): signal loss on T2* alone. Applied in this order.
_MIMIC_CONTRAST = {
    "pallidal_iron": {"T1": 0.0, "T2": 0.25, "T2S": 0.55},
    "vein": {"T1": 0.15, "T2": 0.6, "T2S": 0.6},
    "dentate": {"T1": 0.0, "T2": 0.2, "T2S": 0.5},
    "deep_iron": {"T1": 0.0, "T2": 0.15, "T2S": 0.35},
    "air_artefact": {"T1": 0.0, "T2": 0.05, "T2S": 0.75},
}

# Template-space (LPS, mm) places for microbleeds and mimics, from MNI coordinates.
_DEEP_CENTRES = [(-12, 18, 6), (12, 18, 6), (-25, -2, 0), (25, -2, 0), (-14, -10, 12), (14, -10, 12)]
_INFRATENTORIAL_CENTRES = [(0, 28, -35), (-22, 60, -35), (22, 60, -35)]
_PALLIDUM_CENTRES = [(-19, 3, -1), (19, 3, -1)]
_DENTATE_CENTRES = [(-14, 56, -34), (14, 56, -34)]
# Putamen, substantia nigra, red nucleus (both sides): iron-rich deep grey matter.
_DEEP_IRON_CENTRES = [(-25, -2, 2), (25, -2, 2), (-10, 18, -12), (10, 18, -12), (-4, 19, -8), (4, 19, -8)]
# Where air lies next to the brain: above the frontal sinus, over the temporal bones.
_AIR_CENTRES = [(0, -48, -18), (-42, 20, -30), (42, 20, -30)]
_LOCATION_WEIGHTS = {"lobar": 0.6, "deep": 0.25, "infratentorial": 0.15}
# With superficial microbleeds, a share of the lobar ones lies in the outermost cortex instead.
_SUPERFICIAL_LOCATION_WEIGHTS = {"lobar": 0.35, "superficial": 0.25, "deep": 0.25, "infratentorial": 0.15}
SUPERFICIAL_DEPTH_MM = (1.0, 3.0)  # centre under the brain's surface
_SUPERFICIAL_DIAMETER_MM = (2.0, 6.0)  # larger ones there would reach past the cortex
SMALL_DIAMETER_MM = 4.0  # small=True: every microbleed under this, the ones thick slices hide
# How far beyond the brain a loose (extraction-like) mask reaches, mm: CSF up to a rim of head.
_LOOSE_MASK_REACH_MM = (0.5, 6.0)

#: A raw scan's field of view reaches this far (mm) beyond the brain: the head.
RAW_MARGIN_MM = 25

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class Microbleed:
    centre_lps: tuple[float, float, float]  # world mm on the T2* grid (LPS, as SimpleITK)
    diameter_mm: float  # on T2*
    location: str  # the MARS category at its place in the template (MNI): lobar, deep or infratentorial
    region: str = ""  # the MARS region there (regions.py's map, looked up at the true MNI position)
    drawn_from: str = ""  # the pool it was drawn from (_choose_microbleeds): the category it was meant for


def _template_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


class _Template:
    """Tissue maps on the 1 mm template grid, plus mimic maps drawn per case."""

    def __init__(self) -> None:
        folder = _template_dir()
        images = {k: sitk.ReadImage(str(folder / f), sitk.sitkFloat32) for k, f in _TEMPLATE_FILES.items()}
        self.reference = images["t1"]
        brain = sitk.GetArrayFromImage(images["t1"]) > 0
        self.brain = ndimage.binary_fill_holes(brain)
        self.gm = sitk.GetArrayFromImage(images["gm"]) / 255.0
        self.wm = sitk.GetArrayFromImage(images["wm"]) / 255.0
        self.csf = np.clip(self.brain - self.gm - self.wm, 0, 1) * self.brain
        # A microbleed centre needs brain tissue around it, not CSF or the brain's edge.
        self.tissue_core = ndimage.binary_erosion(self.brain, iterations=4) & (self.gm + self.wm > 0.8)
        self.lobar = self.tissue_core & (self.gm > 0.35)
        surface = np.argwhere(self.brain & ~ndimage.binary_erosion(self.brain))
        self.surface_lps = self.index_to_lps(surface[:: max(1, len(surface) // 4000)])
        self.centre_lps = self.surface_lps.mean(0)
        self.atlas = regions.load_atlas(regions.atlas_folder())  # the microbleeds' true regions

    @functools.cached_property
    def superficial(self) -> np.ndarray:
        """Superficial lobar cortex: grey matter SUPERFICIAL_DEPTH_MM under the surface, lobar in the atlas."""
        lo, hi = SUPERFICIAL_DEPTH_MM
        depth_mm = ndimage.distance_transform_edt(self.brain)  # to the brain's surface (1 mm grid)
        cortex = np.argwhere((depth_mm >= lo) & (depth_mm <= hi) & (self.gm > 0.35))
        places = regions.regions_at(self.index_to_lps(cortex), self.atlas)
        return cortex[[regions.MARS_REGIONS[place] == "lobar" for place in places]]

    def index_to_lps(self, idx_zyx: np.ndarray) -> np.ndarray:
        return np.array([self.reference.TransformContinuousIndexToPhysicalPoint(i[::-1].tolist()) for i in idx_zyx])

    def lps_to_index(self, point: tuple[float, float, float]) -> np.ndarray:
        return np.array(self.reference.TransformPhysicalPointToContinuousIndex(point))[::-1]

    def as_image(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(self.reference)
        return image


def _soft_inside(distance: np.ndarray, radius: float, edge: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip((distance - radius) / edge, -50, 50)))


def _draw_mimics(template: _Template, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vein and pallidal-iron fraction maps on the template grid."""
    shape = template.brain.shape
    iron = np.zeros(shape, np.float32)
    if rng.random() < 0.6:
        zz, yy, xx = np.indices(shape, dtype=np.float32)
        semi = np.array([5.0, 4.0, 3.0]) * rng.uniform(0.7, 1.2)
        for centre in _PALLIDUM_CENTRES:
            c = template.lps_to_index(centre)
            d = np.sqrt(((zz - c[0]) / semi[0]) ** 2 + ((yy - c[1]) / semi[1]) ** 2 + ((xx - c[2]) / semi[2]) ** 2)
            iron = np.maximum(iron, _soft_inside(d, 1.0, 0.15))
        iron *= rng.uniform(0.5, 1.0)
    vessels = np.zeros(shape, np.float32)
    candidates = np.argwhere(template.tissue_core)
    for _ in range(rng.integers(3, 9)):
        start = candidates[rng.integers(len(candidates))].astype(float)
        direction = rng.normal(size=3)
        points = _random_walk(start, direction, rng.uniform(20, 60), 0.15, rng)
        _add_tube(vessels, template, points, rng.uniform(0.5, 1.1))
    return {"pallidal_iron": iron, "vein": vessels}


def _random_walk(start: np.ndarray, direction: np.ndarray, length_mm: float, wiggle: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A vessel's centre line (template index, 1 mm): 0.5 mm steps from `start`, each turning by a
    random `wiggle`."""
    points = [start]
    for _ in range(int(length_mm / 0.5)):
        direction = direction / np.linalg.norm(direction) + rng.normal(scale=wiggle, size=3)
        points.append(points[-1] + 0.5 * direction / np.linalg.norm(direction))
    return np.array(points)


def _add_tube(vessels: np.ndarray, template: _Template, points: np.ndarray, radius: float) -> None:
    """A vessel of `radius` mm along `points` (template index, 1 mm) into `vessels`, within the brain."""
    shape = vessels.shape
    lo = np.maximum(np.floor(points.min(0) - radius - 2).astype(int), 0)
    hi = np.minimum(np.ceil(points.max(0) + radius + 2).astype(int), np.array(shape) - 1)
    if np.any(hi < lo):  # wandered out of the template's field of view
        return
    box = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij"), -1)
    dist, _ = cKDTree(points).query(box.reshape(-1, 3))
    frac = np.clip(radius + 0.5 - dist, 0, 1).reshape(box.shape[:3]).astype(np.float32)
    sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    vessels[sl] = np.maximum(vessels[sl], frac * template.brain[sl])


def _ellipsoids(template: _Template, centres, semi_mm: np.ndarray, rng: np.random.Generator,
                sizes: np.ndarray | None = None) -> np.ndarray:
    """Soft ellipsoids (semi-axes in mm, z y x, each scaled by `sizes`) at template LPS centres."""
    out = np.zeros(template.brain.shape, np.float32)
    zz, yy, xx = np.indices(out.shape, dtype=np.float32)
    for centre, size in zip(centres, sizes if sizes is not None else np.ones(len(centres))):
        if size < 0.3:  # absent on this side
            continue
        c = template.lps_to_index(tuple(np.array(centre) + rng.normal(scale=1.5, size=3)))
        semi = semi_mm * size
        d = np.sqrt(((zz - c[0]) / semi[0]) ** 2 + ((yy - c[1]) / semi[1]) ** 2 + ((xx - c[2]) / semi[2]) ** 2)
        out = np.maximum(out, _soft_inside(d, 1.0, 0.15))
    return out


def _draw_varied_mimics(template: _Template, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Mimic fraction maps from wide distributions (#16): veins of any calibre (0.3-2 mm radius),
    length, curvature and orientation (a third nearly through-plane, round on thick slices), some
    branching; pallidal calcification symmetric or one-sided; dentate calcification; iron in the
    deep grey matter; signal loss near air. Each kind may be absent; the maps are extents (how
    dark each is, is the case's look)."""
    shape = template.brain.shape
    maps = {name: np.zeros(shape, np.float32) for name in _MIMIC_CONTRAST}
    if rng.random() < 0.7:
        sides = rng.uniform(0.6, 1.3, 2) * ([1, 1] if rng.random() < 0.6 else rng.permutation([1, 0]))
        maps["pallidal_iron"] = _ellipsoids(template, _PALLIDUM_CENTRES, np.array([5.0, 4.0, 3.0]), rng, sides)
    if rng.random() < 0.3:
        maps["dentate"] = _ellipsoids(template, _DENTATE_CENTRES, np.array([5.0, 7.0, 5.0]),
                                      rng, rng.uniform(0.5, 1.1, 2))
    if rng.random() < 0.5:
        maps["deep_iron"] = _ellipsoids(template, _DEEP_IRON_CENTRES, np.array([5.0, 6.0, 4.0]),
                                        rng, rng.uniform(0.5, 1.0, 6))
    if rng.random() < 0.6:
        maps["air_artefact"] = _ellipsoids(template, _AIR_CENTRES, np.array([9.0, 12.0, 12.0]),
                                           rng, rng.uniform(0.0, 1.2, 3)) * template.brain
    inside = np.argwhere(ndimage.binary_erosion(template.brain, iterations=2))
    for _ in range(rng.integers(2, 15)):
        start = inside[rng.integers(len(inside))].astype(float)
        through_plane = rng.random() < 0.35
        direction = np.array([1.0, 0, 0]) + rng.normal(scale=0.2, size=3) if through_plane else rng.normal(size=3)
        wiggle = rng.uniform(0.02, 0.1) if through_plane else rng.uniform(0.03, 0.35)
        radius = float(np.exp(rng.uniform(np.log(0.3), np.log(2.0))))
        points = _random_walk(start, direction, rng.uniform(10, 90), wiggle, rng)
        _add_tube(maps["vein"], template, points, radius)
        if rng.random() < 0.3:  # a branch, thinner
            fork = points[rng.integers(len(points))]
            branch = _random_walk(fork, rng.normal(size=3), rng.uniform(8, 30), wiggle, rng)
            _add_tube(maps["vein"], template, branch, radius * rng.uniform(0.4, 0.8))
    return maps


def _choose_microbleeds(template: _Template, rng: np.random.Generator, count: int, superficial: bool = False,
                        small: bool = False) -> list[tuple[np.ndarray, float, str]]:
    """Centres (template index), T2* diameters and location classes, not touching each other;
    `small`: diameters up to SMALL_DIAMETER_MM only."""
    chosen: list[tuple[np.ndarray, float, str]] = []
    deep_idx = np.argwhere(template.tissue_core)
    deep_pts = template.index_to_lps(deep_idx[rng.choice(len(deep_idx), size=min(20000, len(deep_idx)), replace=False)])
    pools = {"lobar": np.argwhere(template.lobar)}
    for name, centres in (("deep", _DEEP_CENTRES), ("infratentorial", _INFRATENTORIAL_CENTRES)):
        near = np.min(np.linalg.norm(deep_pts[:, None, :] - np.array(centres)[None], axis=2), axis=1) < 9
        pools[name] = np.array([template.lps_to_index(p) for p in deep_pts[near]])
    location_weights = _LOCATION_WEIGHTS
    if superficial:
        pools["superficial"] = template.superficial
        location_weights = _SUPERFICIAL_LOCATION_WEIGHTS
    names = list(location_weights)
    weights = np.array([location_weights[n] for n in names])
    attempts = 0
    while len(chosen) < count and attempts < count * 50:
        attempts += 1
        location = names[rng.choice(len(names), p=weights / weights.sum())]
        pool = pools[location]
        centre = pool[rng.integers(len(pool))].astype(float) + rng.uniform(-0.5, 0.5, 3)
        # Most microbleeds are small: log-uniform 2-10 mm.
        low, high = _SUPERFICIAL_DIAMETER_MM if location == "superficial" else (2.0, 10.0)
        high = min(high, SMALL_DIAMETER_MM) if small else high
        diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        if any(np.linalg.norm(centre - c) < (diameter + d) / 2 + 3 for c, d, _ in chosen):
            continue
        chosen.append((centre, diameter, location))
    return chosen


def _random_transform(template: _Template, rng: np.random.Generator) -> sitk.Transform:
    """Output(subject) space → template space: similarity with small per-axis scaling."""
    centre = template.centre_lps
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre.tolist())
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    rotation = sitk.Euler3DTransform(centre.tolist(), *angles.tolist())
    scale = np.diag(rng.uniform(0.92, 1.08, 3))
    matrix = np.array(rotation.GetMatrix()).reshape(3, 3) @ scale
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation(rng.uniform(-5, 5, 3).tolist())
    return affine


def _render_bleeds(shape, grid: sitk.Image, bleeds: list[Microbleed], radius_factor: float) -> np.ndarray:
    """Partial-volume fraction of microbleed (scaled by radius_factor) per voxel of `grid`."""
    frac = np.zeros(shape, np.float32)
    spacing = np.array(grid.GetSpacing())[::-1]
    # Sub-samples per voxel: about every 0.25 mm, so 3.5 mm slices get partial volume right.
    sub = [np.linspace(-0.5, 0.5, int(np.ceil(s / 0.25)) + 1)[:-1] + 0.5 / (int(np.ceil(s / 0.25))) for s in spacing]
    for bleed in bleeds:
        radius = bleed.diameter_mm / 2 * radius_factor
        centre = np.array(grid.TransformPhysicalPointToContinuousIndex(bleed.centre_lps))[::-1]
        reach = np.ceil((radius + 1.0) / spacing).astype(int) + 1
        lo = np.maximum(np.round(centre).astype(int) - reach, 0)
        hi = np.minimum(np.round(centre).astype(int) + reach, np.array(shape) - 1)
        if np.any(hi < lo):
            continue
        axes = [np.arange(a, b + 1)[:, None] + s[None, :] for a, b, s in zip(lo, hi, sub)]
        # Squared distance in mm, separable over the three axes, averaged over sub-samples.
        dz = ((axes[0] - centre[0]) * spacing[0]) ** 2
        dy = ((axes[1] - centre[1]) * spacing[1]) ** 2
        dx = ((axes[2] - centre[2]) * spacing[2]) ** 2
        d = np.sqrt(dz[:, None, None, :, None, None] + dy[None, :, None, None, :, None] + dx[None, None, :, None, None, :])
        inside = _soft_inside(d, radius, 0.15).mean(axis=(3, 4, 5))
        sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        frac[sl] = np.maximum(frac[sl], inside)
    return frac


def _bias_field(shape, rng: np.random.Generator) -> np.ndarray:
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    log_field = np.zeros(shape, np.float32)
    for term in (z, y, x, z * y, y * x, z * x, z * z, y * y, x * x):
        log_field += rng.normal(scale=0.08) * term
    return np.exp(log_field)


@functools.cache
def _colin27_head() -> tuple[sitk.Image, sitk.Image]:
    """The Colin27 T1 head (MNI space, as the template; white matter about 1) and its intracranial
    space (ch2bet, holes filled)."""
    head = COLIN27_DIR / "ch2.nii.gz"
    if not head.is_file():
        raise FileNotFoundError(f"raw phantoms need the Colin27 head {head}: apt-get install mricron-data")
    image = sitk.ReadImage(str(head), sitk.sitkFloat32)
    brain = sitk.ReadImage(str(COLIN27_DIR / "ch2bet.nii.gz"))
    inside = sitk.GetArrayFromImage(brain) > 0
    intracranial = sitk.GetImageFromArray(ndimage.binary_fill_holes(inside).astype(np.float32))
    intracranial.CopyInformation(brain)
    return image / float(np.percentile(sitk.GetArrayViewFromImage(image)[inside], 90)), intracranial


def _head_signal(head: np.ndarray, intracranial: np.ndarray, channel: str) -> np.ndarray:
    """A T1 head's intensities (white matter about 1) in a channel's contrast, for what lies outside
    the phantom's brain: CSF within the skull (Colin27's brain is not the template's), skull dark
    everywhere, muscle middling, fat bright."""
    _, _, s_csf = _TISSUE_SIGNAL[channel]
    outside = head if channel == "T1" else np.interp(head, [0.0, 0.12, 0.3, 0.55, 0.9, 1.5],
                                                     [0.0, 0.05, s_csf, 0.35, 0.8, 0.8])
    return (intracranial * s_csf + (1 - intracranial) * outside).astype(np.float32)


def _raw_grid(grid: sitk.Image, rng: np.random.Generator) -> tuple[sitk.Image, sitk.Transform]:
    """A T1/T2 grid of its own (1 mm, tilted, covering the T2* field of view) and the subject's
    movement since the T2* scan (the channel's world points → the T2* scan's)."""
    corners = np.array([grid.TransformIndexToPhysicalPoint([int(c) for c in corner]) for corner in
                        np.array(np.meshgrid(*[[0, s - 1] for s in grid.GetSize()], indexing="ij")).reshape(3, -1).T])
    centre = corners.mean(0)
    tilt = sitk.VersorTransform(tuple(rng.normal(size=3) / np.linalg.norm(rng.normal(size=3) + 1e-9)),
                                float(np.deg2rad(rng.uniform(5, 15))))
    direction = np.array(tilt.GetMatrix()).reshape(3, 3)
    extent = np.ptp(corners @ direction, axis=0) + 10  # the tilted box that holds the T2* field of view
    own = sitk.Image([int(np.ceil(e)) for e in extent], sitk.sitkFloat32)
    own.SetDirection(direction.ravel().tolist())
    own.SetOrigin((centre - direction @ (extent / 2)).tolist())
    return own, random_rigid(rng, tuple(centre))


@dataclass(frozen=True)
class _Look:
    """One case's contrast: tissue signal and mimic/microbleed darkening per channel, noise scale,
    and, for a loosely masked case, how far the mask reaches beyond the brain (mm; None: exactly
    the brain)."""

    tissue: dict[str, tuple[float, float, float]]
    mimic: dict[str, dict[str, float]]
    bleed: dict[str, float]
    noise: float = 1.0
    loose_mask_mm: float | None = None


_FIXED_LOOK = _Look(_TISSUE_SIGNAL, _MIMIC_CONTRAST, _BLEED_CONTRAST)


def _draw_look(rng: np.random.Generator) -> _Look:
    """A varied case's contrast (#16): no single intensity recipe to learn. Each tissue signal and
    darkening is scaled at random per channel; a third of the T2* scans are SWI-like (veins and
    microbleeds darker); half of the cases are masked loosely, as a brain extraction leaves them
    (CSF, meninges and a rim of skull inside the mask), up to 6 mm beyond the brain."""
    swi = rng.random() < 0.35
    tissue = {c: tuple(float(v) for v in np.array(values) * rng.uniform(0.85, 1.15, 3))
              for c, values in _TISSUE_SIGNAL.items()}
    mimic = {name: {c: float(min(0.95, v * rng.uniform(0.4, 1.3))) for c, v in contrasts.items()}
             for name, contrasts in _MIMIC_CONTRAST.items()}
    bleed = {c: float(min(0.97, v * rng.uniform(0.75, 1.1))) for c, v in _BLEED_CONTRAST.items()}
    if swi:  # the drawn vein darkening is at most 0.6 x 1.3 < 0.95: capping before the boost changes nothing
        mimic["vein"]["T2S"] = min(0.95, mimic["vein"]["T2S"] * 1.4)
        bleed["T2S"] = float(rng.uniform(0.9, 0.97))
    loose = float(rng.uniform(*_LOOSE_MASK_REACH_MM)) if rng.random() < 0.5 else None
    return _Look(tissue, mimic, bleed, float(rng.uniform(0.6, 1.8)), loose)


def _loose_mask(brain_mask: np.ndarray, intracranial: np.ndarray, grid: sitk.Image, reach_mm: float,
                rng: np.random.Generator) -> np.ndarray:
    """A brain extraction's mask: the brain and the intracranial space, grown by up to `reach_mm`
    with an uneven edge (a smooth random field), holes filled."""
    spacing = np.array(grid.GetSpacing())[::-1]
    distance = ndimage.distance_transform_edt(~(brain_mask.astype(bool) | intracranial), sampling=spacing)
    wobble = ndimage.gaussian_filter(rng.normal(size=brain_mask.shape), sigma=8 / spacing)
    wobble /= max(float(np.abs(wobble).max()), 1e-6)
    return ndimage.binary_fill_holes(distance <= reach_mm * (0.6 + 0.4 * wobble)).astype(np.uint8)


@dataclass(frozen=True)
class _Subject:
    """What every visit of one phantom subject shares: the anatomy's warp (the subject's world →
    the template), the look, the mimics and the microbleeds (centres in the subject's world)."""

    transform: sitk.Transform
    look: _Look
    spacing_factor: float  # the first visit's grid spacing over its acquisition's (drawn here: make_case's order)
    mimic_maps: dict[str, np.ndarray]
    bleeds: list[Microbleed]


def _draw_subject(template: _Template, rng: np.random.Generator, n_microbleeds: int, varied: bool,
                  loose_mask: bool, superficial: bool = False, small: bool = False) -> _Subject:
    transform = _random_transform(template, rng)
    inverse = transform.GetInverse()
    look = _draw_look(rng) if varied else _FIXED_LOOK
    if loose_mask and look.loose_mask_mm is None:
        look = replace(look, loose_mask_mm=float(rng.uniform(*_LOOSE_MASK_REACH_MM)))
    spacing_factor = rng.uniform(0.97, 1.03)
    mimic_maps = _draw_varied_mimics(template, rng) if varied else _draw_mimics(template, rng)
    chosen = _choose_microbleeds(template, rng, n_microbleeds, superficial, small)
    in_template = [template.index_to_lps(c[None])[0] for c, _, _ in chosen]  # MNI, LPS
    # The truth is where each microbleed landed, not the pool it came from: the cortical grey matter
    # pool also reaches the cerebellar cortex and the deep nuclei (a quarter of its draws).
    places = regions.regions_at(np.array(in_template), template.atlas)
    bleeds = [Microbleed(tuple(inverse.TransformPoint(p.tolist())), d, regions.MARS_REGIONS[region], region, pool)
              for p, (_, d, pool), region in zip(in_template, chosen, places)]
    return _Subject(transform, look, spacing_factor, mimic_maps, bleeds)


def make_case(subject: str, acquisition: Acquisition, n_microbleeds: int, rng: np.random.Generator,
              template: _Template | None = None, raw: bool = False, varied: bool = False,
              loose_mask: bool = False, superficial: bool = False, small: bool = False
              ) -> tuple[dict[str, sitk.Image], sitk.Image, list[Microbleed], sitk.Image, sitk.Image]:
    """One phantom: channel images on their grids, the T2* label, the microbleeds drawn, the
    brain mask and the mimic map (layout.MIMIC_LABELS) on the T2* grid; `raw`: its raw twin
    (module docstring; the same draws first, so the same subject and microbleeds); `varied`: mimics,
    contrast and masks drawn from wide distributions (_draw_varied_mimics, _draw_look); `loose_mask`:
    masked as a brain extraction leaves a scan (_loose_mask), whatever the look; `superficial`: some
    microbleeds in the outermost cortex; `small`: microbleeds under SMALL_DIAMETER_MM only
    (_choose_microbleeds)."""
    template = template or _Template()
    drawn = _draw_subject(template, rng, n_microbleeds, varied, loose_mask, superficial, small)
    return _render_visit(drawn, acquisition, drawn.spacing_factor, rng, template, raw)


def _render_visit(drawn: _Subject, acquisition: Acquisition, spacing_factor: float, rng: np.random.Generator,
                  template: _Template, raw: bool = False, pose: sitk.Transform | None = None
                  ) -> tuple[dict[str, sitk.Image], sitk.Image, list[Microbleed], sitk.Image, sitk.Image]:
    """One visit of a subject, as make_case returns it; `pose`: where the head lies in this visit's
    scanner (this visit's world → the subject's); None: where it was drawn."""
    transform = drawn.transform if pose is None else sitk.CompositeTransform([drawn.transform, pose])  # pose first
    inverse = transform.GetInverse()
    look = drawn.look

    # T2* grid: axial, covering the warped brain with a margin (a raw scan's: the head too).
    warped = np.array([inverse.TransformPoint(p.tolist()) for p in template.surface_lps])
    margin = RAW_MARGIN_MM if raw else 12 if look.loose_mask_mm is not None else 4
    lo, hi = warped.min(0) - margin, warped.max(0) + margin
    spacing_xyz = np.array(acquisition.spacing_zyx[::-1]) * spacing_factor
    size = np.ceil((hi - lo) / spacing_xyz).astype(int)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing_xyz.tolist())
    grid.SetOrigin(lo.tolist())

    mimic_maps = drawn.mimic_maps
    bleeds = drawn.bleeds if pose is None else \
        [replace(b, centre_lps=tuple(pose.GetInverse().TransformPoint(b.centre_lps))) for b in drawn.bleeds]
    # channel -> its grid and its world → the T2* scan's world (the subject's movement between scans)
    grids = {channel: (grid, sitk.Transform()) for channel in layout.CHANNELS}
    if raw:
        grids.update({channel: _raw_grid(grid, rng) for channel in layout.CHANNELS
                      if channel != layout.REFERENCE_CHANNEL})

    def on_grid(array: np.ndarray, channel: str, image: sitk.Image | None = None) -> np.ndarray:
        own, movement = grids[channel]
        to_template = sitk.CompositeTransform([transform, movement])  # the movement first
        source = image if image is not None else template.as_image(array)
        return sitk.GetArrayFromImage(sitk.Resample(source, own, to_template, sitk.sitkLinear, 0.0))

    shape = sitk.GetArrayViewFromImage(grid).shape
    t2s_fraction = _render_bleeds(shape, grid, bleeds, 1.0)
    label = (t2s_fraction >= 0.5).astype(np.uint8)
    # A microbleed smaller than a thick slice is still annotated: its most affected voxel.
    for bleed in bleeds:
        single = _render_bleeds(shape, grid, [bleed], 1.0)
        if not (label & (single >= 0.5)).any() and single.max() > 0:
            label[np.unravel_index(np.argmax(single), shape)] = 1
    brain_map = template.brain.astype(np.float32)
    brains = {channel: on_grid(brain_map, channel) for channel in layout.CHANNELS}  # brain fraction per grid
    brain_mask = (brains[layout.REFERENCE_CHANNEL] > 0.5).astype(np.uint8)
    label *= brain_mask
    loose = look.loose_mask_mm is not None and not raw  # all channels on the T2* grid then
    if loose:
        intracranial = on_grid(None, layout.REFERENCE_CHANNEL, _colin27_head()[1]) > 0.5
        loose_mask = _loose_mask(brain_mask, intracranial, grid, look.loose_mask_mm, rng)

    scale = rng.uniform(200, 3000)
    dtype = rng.choice(["int16", "uint16", "float32"])
    channels: dict[str, sitk.Image] = {}
    mimics = np.zeros(shape, np.uint8)
    for channel in layout.CHANNELS:
        own, movement = grids[channel]
        wm, gm, csf = (on_grid(m, channel) for m in (template.wm, template.gm, template.csf))
        brain = brains[channel]
        s_wm, s_gm, s_csf = look.tissue[channel]
        signal = s_wm * wm + s_gm * gm + s_csf * csf
        fractions = {name: on_grid(m, channel) for name, m in mimic_maps.items() if m.any()}
        for name, fraction in fractions.items():
            signal *= 1 - look.mimic[name][channel] * fraction
        if channel == layout.REFERENCE_CHANNEL:  # where the mimics are (a third of a voxel or more)
            for value, name in layout.MIMIC_LABELS.items():
                if name in fractions:
                    mimics[(fractions[name] >= 0.3) & (brain_mask > 0)] = value
        back = movement.GetInverse()
        moved = [replace(b, centre_lps=tuple(back.TransformPoint(b.centre_lps))) for b in bleeds]
        bleed_fraction = t2s_fraction if channel == "T2S" else _render_bleeds(brain.shape, own, moved,
                                                                              _BLOOM_RADIUS[channel])
        signal *= 1 - look.bleed[channel] * bleed_fraction
        if raw or loose:  # the head around the brain (the brain's edge blends into it)
            head, intracranial = (on_grid(None, channel, image) for image in _colin27_head())
            signal += (1 - brain) * _head_signal(head, intracranial, channel)
        signal *= _bias_field(brain.shape, rng)
        sigma = acquisition.noise * look.noise * s_wm * rng.uniform(0.8, 1.25)
        noisy = np.sqrt((signal + rng.normal(scale=sigma, size=brain.shape)) ** 2
                        + rng.normal(scale=sigma, size=brain.shape) ** 2)
        kept = 1 if raw else loose_mask if loose else brain > 0.5
        values = (noisy * kept * scale).astype(np.float32)
        if dtype != "float32":
            values = np.clip(np.round(values), 0, np.iinfo(dtype).max).astype(dtype)
        image = sitk.GetImageFromArray(values)
        image.CopyInformation(own)
        if channel != layout.REFERENCE_CHANNEL and not raw:
            # Registered T1/T2 carry the T2* grid only up to rounding, as real exported files do.
            image.SetOrigin((np.array(grid.GetOrigin()) + rng.uniform(-5e-5, 5e-5, 3)).tolist())
            image.SetSpacing((np.array(grid.GetSpacing()) * (1 + rng.uniform(-1e-6, 1e-6, 3))).tolist())
        channels[channel] = image
    label_image, brain_image, mimic_image = (sitk.GetImageFromArray(a) for a in (label, brain_mask, mimics))
    for image in (label_image, brain_image, mimic_image):
        image.CopyInformation(grid)
    return channels, label_image, bleeds, brain_image, mimic_image


def draw_microbleed_count(rng: np.random.Generator) -> int:
    """Most scans have few microbleeds (VALDO: median 1), some none, a few dozens."""
    kind = rng.random()
    if kind < 0.2:
        return 0
    if kind < 0.7:
        return int(rng.integers(1, 4))
    if kind < 0.9:
        return int(rng.integers(4, 11))
    return int(rng.integers(11, 36))


def generate(out_dir: Path, n: int, seed: int, cohorts: list[str] | None = None, raw: bool = False,
             varied: bool = False, loose_masks: bool = False, superficial: bool = False,
             small: bool = False, processes: int = 1) -> list[dict]:
    """Write `n` phantoms (cohorts in turn) with their labels, phantoms.csv and microbleeds.csv;
    `raw`: the raw twins of the phantoms the same seed gives; `varied`: wide mimic and contrast
    distributions; `loose_masks`: every case masked as a brain extraction leaves it; `superficial`:
    superficial cortical microbleeds too; `small`: small microbleeds only (make_case). `processes` > 1 makes cases in that many
    processes: each case has its own random generator, so the phantoms are the same."""
    if raw and loose_masks:
        raise ValueError("raw phantoms are not masked: --raw and --loose-masks exclude each other")
    out_dir.mkdir(parents=True, exist_ok=True)
    cohorts = cohorts or list(VALDO_COHORTS)
    unknown = sorted(set(cohorts) - set(COHORTS))
    if unknown:
        raise ValueError(f"unknown acquisition(s) {', '.join(unknown)}: choose from {', '.join(COHORTS)}")
    settings = {"raw": raw, "varied": varied, "loose_masks": loose_masks, "superficial": superficial, "small": small}
    template = None if processes > 1 else _Template()  # workers read their own (_load_worker_template)
    written = []
    for case, rows in in_processes(functools.partial(_write_case, out_dir, template, **settings),
                                   list(_draws(n, seed, cohorts, "s")), processes, _load_worker_template):
        log.info("phantom %s (%s): %d microbleeds, grid %s", case["subject"], case["cohort"], len(rows),
                 case["size_xyz"])
        written.append((case, rows))
    cases = [case for case, _ in written]
    _write_csv(out_dir / "phantoms.csv", cases)
    _write_csv(out_dir / "microbleeds.csv", [row for _, rows in written for row in rows],
               ["subject", "x_lps", "y_lps", "z_lps", "diameter_mm", "location", "region", "drawn_from"])
    return cases


#: The template of a generate worker process (read once per process, not once per case).
_worker_template: _Template | None = None


def _load_worker_template() -> None:
    global _worker_template
    _worker_template = _Template()


def _write_case(out_dir: Path, template: _Template | None, draw: tuple[np.random.Generator, Acquisition, str],
                raw: bool, varied: bool, loose_masks: bool, superficial: bool, small: bool
                ) -> tuple[dict, list[dict]]:
    """One phantom of generate written (template None: the worker's); its phantoms.csv row and
    microbleeds.csv rows."""
    rng, acquisition, subject = draw
    stem = layout.case_stem(subject)
    channels, label, bleeds, brain, mimics = make_case(subject, acquisition, draw_microbleed_count(rng), rng,
                                                       template or _worker_template, raw, varied, loose_masks,
                                                       superficial, small)
    _write_phantom(out_dir, stem, channels, label, mimics)
    if raw:  # the truth for brain extraction, and a --brain-mask folder
        write_image_atomic(brain, out_dir / layout.brain_mask_name(stem))
    case = {"subject": subject, "cohort": acquisition.name, "n_microbleeds": len(bleeds),
            "size_xyz": "x".join(map(str, label.GetSize())),
            "spacing_xyz": "x".join(f"{s:.3f}" for s in label.GetSpacing())}
    rows = [{"subject": subject, "x_lps": b.centre_lps[0], "y_lps": b.centre_lps[1], "z_lps": b.centre_lps[2],
             "diameter_mm": round(b.diameter_mm, 3), "location": b.location, "region": b.region,
             "drawn_from": b.drawn_from} for b in bleeds]
    return case, rows


#: A visit pair's two sessions (seed layout): session order makes the first the baseline.
VISIT_SESSIONS = ("1", "2")
VISIT_PAIRS_CSV, VISIT_MICROBLEEDS_CSV = "visit_pairs.csv", "visit_microbleeds.csv"  # the truth of generate_visit_pairs
VISIT_STATUSES = ("persistent", "new", "resolved")


def make_visit_pair(acquisitions: tuple[Acquisition, Acquisition], counts: dict[str, int], rng: np.random.Generator,
                    template: _Template | None = None, varied: bool = False) -> tuple[tuple, tuple, list[dict]]:
    """Two visits of one phantom subject (#34): the same anatomy, mimics and persistent microbleeds,
    `counts["new"]` microbleeds at the follow-up only and `counts["resolved"]` at the baseline only.
    The follow-up has the head moved (random_rigid: 3° to 10°, 3 mm to 10 mm), a grid of its own,
    its own contrast (each tissue's signal scaled by 0.9 to 1.1 per channel) and noise. Returns each
    visit as make_case does and the truth: per microbleed its status, its centre at each visit (LPS
    mm, each visit's world) and its diameter; fewer when the brain had no room for all."""
    template = template or _Template()
    statuses = [status for status in VISIT_STATUSES for _ in range(counts[status])]
    drawn = _draw_subject(template, rng, len(statuses), varied, loose_mask=False)
    statuses = statuses[:len(drawn.bleeds)]

    def showing(kept: tuple[str, ...]) -> _Subject:
        return replace(drawn, bleeds=[b for b, status in zip(drawn.bleeds, statuses) if status in kept])

    baseline = _render_visit(showing(("persistent", "resolved")), acquisitions[0], drawn.spacing_factor, rng, template)
    pose = random_rigid(rng, drawn.transform.GetInverse().TransformPoint(template.centre_lps.tolist()))
    look = replace(drawn.look, tissue={channel: tuple(float(v) for v in np.array(values) * rng.uniform(0.9, 1.1, 3))
                                       for channel, values in drawn.look.tissue.items()})
    follow_up = _render_visit(replace(showing(("persistent", "new")), look=look), acquisitions[1],
                              rng.uniform(0.97, 1.03), rng, template, pose=pose)
    back = pose.GetInverse()  # the subject's world (the baseline's) → the follow-up's
    truth = [{"status": status, "baseline_lps": bleed.centre_lps, "follow_up_lps": back.TransformPoint(bleed.centre_lps),
              "diameter_mm": bleed.diameter_mm} for bleed, status in zip(drawn.bleeds, statuses)]
    return baseline, follow_up, truth


def draw_visit_counts(rng: np.random.Generator) -> dict[str, int]:
    """New microbleeds spread evenly over the ARIA-H grades (none, mild 1-4, moderate 5-9, severe
    10-13), 0-4 persistent and 0-3 resolved ones."""
    new = (0, int(rng.integers(1, 5)), int(rng.integers(5, 10)), int(rng.integers(10, 14)))[rng.integers(4)]
    return {"persistent": int(rng.integers(0, 5)), "new": new, "resolved": int(rng.integers(0, 4))}


def generate_visit_pairs(out_dir: Path, n: int, seed: int, cohorts: list[str] | None = None,
                         varied: bool = False) -> list[dict]:
    """Write `n` visit pairs (make_visit_pair; cohorts in turn, both visits of a pair in one) as
    sessions 1 and 2 of a subject in the seed layout, with labels and mimic maps, visit_pairs.csv
    (the counts per pair) and visit_microbleeds.csv (the truth per microbleed)."""
    from .longitudinal import aria_h_grade  # the grade the comparison gives, for the truth

    out_dir.mkdir(parents=True, exist_ok=True)
    cohorts = cohorts or ["lowres"]
    template = _Template()
    pairs, rows = [], []
    for rng, acquisition, subject in _draws(n, seed, cohorts, "p"):
        baseline, follow_up, truth = make_visit_pair((acquisition, acquisition), draw_visit_counts(rng), rng,
                                                     template, varied)
        for session, (channels, label, _, _, mimics) in zip(VISIT_SESSIONS, (baseline, follow_up)):
            _write_phantom(out_dir, layout.case_stem(subject, session), channels, label, mimics)
        counted = {status: sum(row["status"] == status for row in truth) for status in VISIT_STATUSES}
        pairs.append({"subject": subject, "cohort": acquisition.name, **counted, "aria_h_grade": aria_h_grade(counted["new"])})
        rows += [{"subject": subject, "status": row["status"], "diameter_mm": round(row["diameter_mm"], 3),
                  **{f"{visit}_{axis}_lps": round(value, 3) for visit in ("baseline", "follow_up")
                     for axis, value in zip("xyz", row[f"{visit}_lps"])}} for row in truth]
        log.info("visit pair %s (%s): %s", subject, acquisition.name, counted)
    _write_csv(out_dir / VISIT_PAIRS_CSV, pairs)
    _write_csv(out_dir / VISIT_MICROBLEEDS_CSV, rows, ["subject", "status", "diameter_mm"] + [
        f"{visit}_{axis}_lps" for visit in ("baseline", "follow_up") for axis in "xyz"])
    return pairs


def _draws(n: int, seed: int, cohorts: list[str], prefix: str) -> Iterator[tuple[np.random.Generator, Acquisition, str]]:
    """Each of `n` cases' own random generator, acquisition (the cohorts in turn) and subject name."""
    for i in range(n):
        yield np.random.default_rng([seed, i]), COHORTS[cohorts[i % len(cohorts)]], f"{prefix}{seed}c{i:03d}"


def _write_phantom(out_dir: Path, stem: str, channels: dict[str, sitk.Image], label: sitk.Image,
                   mimics: sitk.Image) -> None:
    for channel, image in channels.items():
        write_image_atomic(image, out_dir / layout.input_name(stem, channel))
    write_image_atomic(label, out_dir / layout.label_name(stem))
    write_image_atomic(mimics, out_dir / layout.mimic_map_name(stem))  # what false positives sit on (evaluate)


def _write_csv(path: Path, rows: list[dict], header: list[str] | None = None) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# Misregistered copies of real anatomy, for the registration tests and benchmarks/registration.py:
# Debian's mricron-data installs the Colin27 head (ch2) and its brain (ch2bet) here.
COLIN27_DIR = Path(layout.ATLAS_DIR)
T2S_LIKE_SPACING = (0.9, 0.9, 3.0)


def random_rigid(rng: np.random.Generator, centre, max_degrees: float = 10.0, max_shift_mm: float = 10.0
                 ) -> sitk.Euler3DTransform:
    """A random rigid transform: a rotation of 3° to `max_degrees` about a random axis through
    `centre`, then a shift of 3 mm to `max_shift_mm` in a random direction."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(3, max_degrees))
    versor = sitk.VersorRigid3DTransform()
    versor.SetCenter(centre)
    versor.SetRotation(tuple(axis), float(angle))
    direction = rng.normal(size=3)
    versor.SetTranslation(tuple(direction / np.linalg.norm(direction) * rng.uniform(3, max_shift_mm)))
    rigid = sitk.Euler3DTransform()
    rigid.SetMatrix(versor.GetMatrix())
    rigid.SetCenter(centre)
    rigid.SetTranslation(versor.GetTranslation())
    return rigid


def t2s_like_copy(head: sitk.Image, truth: sitk.Transform, rng: np.random.Generator) -> sitk.Image:
    """A T1 head moved by `truth` (fixed→moving mapping, ITK's convention) onto a 0.9x0.9x3 mm axial
    grid, with T2*-like contrast (tissue order inverted: CSF bright, white matter darker than grey),
    a bias field and Rician noise: the T2* scan that the T1 is to be registered onto."""
    size = [int(round(sz * sp / new)) for sz, sp, new in zip(head.GetSize(), head.GetSpacing(), T2S_LIKE_SPACING)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(T2S_LIKE_SPACING)
    grid.SetOrigin(head.GetOrigin())
    grid.SetDirection(head.GetDirection())
    moved = sitk.Resample(sitk.Cast(head, sitk.sitkFloat32), grid, truth, sitk.sitkLinear, 0.0)
    array = sitk.GetArrayFromImage(moved)
    scaled = array / max(np.percentile(array, 99.5), 1e-6)
    contrast = np.where(scaled > 0.05, 1.1 - 0.8 * np.clip(scaled, 0, 1.2) ** 1.5, scaled)  # tissue order inverted
    zz, yy, xx = np.indices(array.shape, dtype=np.float32)
    bias = np.exp(0.2 * (xx / array.shape[2] - 0.5) + 0.15 * (zz / array.shape[0] - 0.5))
    sigma = 0.03
    noisy = np.sqrt((contrast * bias + rng.normal(scale=sigma, size=array.shape)) ** 2
                    + rng.normal(scale=sigma, size=array.shape) ** 2).astype(np.float32)
    image = sitk.GetImageFromArray(noisy)
    image.CopyInformation(grid)
    return image
