"""The brain mask of a case on the T2* grid: found in the scans when they are already skull-stripped,
given by the user, or extracted by deepbet; every channel is then masked with it, as the model saw
in training (the 2021 challenge's scans were skull-stripped).

Whether a T2* scan is skull-stripped: it has a constant background (one value, the commonest on
the grid's faces, exactly equal in voxels that lie together; a scanner's noise never is) and what
is not background adds up to at most 3,000 ml — a brain with its CSF is 1,100–2,000 ml (phantoms
up to 2,500), a head with skull and scalp well over 3,500 (the Colin27 head, background zeroed:
4,152 ml). How much of the grid the background fills does not matter: scans cropped to the brain's
box keep only its corners. Measured on cropped, padded and defaced scans by
benchmarks/skull_stripped_rule.py.

Extraction: deepbet 1.0.2 (MIT; two small networks, weights inside its wheel, so nothing is
downloaded), run on the T1 in its own grid when the model reads a T1 (deepbet was trained on T1;
on the Colin27 head Dice 0.94 against ch2bet), else on the T2* scan itself (measured lower; see
benchmarks/brain_extraction.py and the README). The mask is brought onto the T2* grid by the
transform that put the T1 there (registration.py), so it lies where the registered T1 lies.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import layout
from .cases import CaseError

log = logging.getLogger(__name__)

#: Above this volume (ml) of non-background voxels a T2* scan holds more than a brain.
MAX_BRAIN_ML = 3000.0
#: A constant background lies together: at least this share of its voxels have all six neighbours in
#: it (voxels of a noisy background that happen to share a value lie apart: about p**6 of them).
MIN_BACKGROUND_COHESION = 0.5
#: ... and fills at least this share of the grid (fewer voxels than that are no background to speak of).
MIN_BACKGROUND_SHARE = 0.005
#: A raw scan padded with its minimum keeps its air: at least this share of what is not background
#: lies within DARK of the background (a stripped brain: microbleeds and veins, a few percent).
MAX_DARK_SHARE = 0.2
#: "Dark": within this fraction of the 99th percentile's distance from the background value.
DARK = 0.1
#: A brain mask smaller than this (ml) is not a brain: extraction failed, or the wrong mask was given.
MIN_BRAIN_ML = 300.0


class BrainMasking(str, Enum):
    """How a run gets brain masks (--skull-stripped, --extract-brain, --brain-mask)."""

    AUTO = "auto"  # extract when the T2* scan is not skull-stripped
    SKULL_STRIPPED = "skull-stripped"  # the user says so: take the scans as they are
    EXTRACT = "extract"  # always extract
    GIVEN = "given"  # the user's mask files


@dataclass(frozen=True, kw_only=True)
class BrainSettings:
    masking: BrainMasking = BrainMasking.AUTO
    given: Path | None = None  # --brain-mask FILE or FOLDER (masking GIVEN)
    gpu_allowed: bool = True  # False with --device cpu

    def __post_init__(self):
        object.__setattr__(self, "masking", BrainMasking(self.masking))  # the option table gives its value

    def as_record(self) -> str:
        return f"{self.masking.value}: {self.given}" if self.given else self.masking.value


@dataclass(frozen=True)
class BrainMask:
    """A case's brain mask on the T2* grid (None: the scans were skull-stripped and stay as they are)."""

    mask: np.ndarray | None  # bool, (z, y, x) on the T2* grid
    source: str  # how it was found, for the log, the record and the QC picture
    volume_ml: float
    seconds: float
    extracted: bool = False  # by the tool (deepbet): its edge reaches past the brain (lesions.LesionSettings)

    def as_record(self) -> dict:
        return {"source": self.source, "volume_ml": round(self.volume_ml, 1), "seconds": round(self.seconds, 2),
                "extracted": self.extracted}


def interior_count(voxels: np.ndarray) -> int:
    """Voxels whose six neighbours are set too, beyond the grid counting as set: the count of
    ndimage.binary_erosion(voxels, border_value=1), by shifted ANDs, as scipy's erosion was the
    slow step of reading a case (docs/benchmarks.md)."""
    inner = voxels.copy()
    for axis in range(voxels.ndim):
        later, earlier = ([slice(None)] * voxels.ndim for _ in range(2))
        later[axis], earlier[axis] = slice(1, None), slice(None, -1)
        inner[tuple(later)] &= voxels[tuple(earlier)]
        inner[tuple(earlier)] &= voxels[tuple(later)]
    return int(np.count_nonzero(inner))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """scipy's binary_fill_holes (a hole: background not 6-connected to the grid's border), found by
    labelling the background once, and only in the box around the mask (beyond it all is
    background, so what touches the box's faces reaches the border), instead of dilating the whole
    grid until nothing changes: the same voxels, in a fraction of the time on a whole-head grid."""
    filled = np.zeros(mask.shape, bool)
    box = ndimage.find_objects(mask.view(np.uint8))
    if not box:
        return filled
    background, _ = ndimage.label(~mask[box[0]])
    outside = np.zeros(background.max() + 1, bool)
    for axis in range(background.ndim):
        for end in (0, -1):
            outside[np.take(background, end, axis=axis)] = True
    outside[0] = False  # label 0 is the mask itself
    filled[box[0]] = ~outside[background]
    return filled


class Background:
    """A T2* scan's background candidate: the commonest value on the grid's six faces (zero, negative
    or any other: a z-scored scan's background need not be its minimum). Each measure is computed
    when first asked for: --skull-stripped needs only the volume, a stripped scan's brain only the voxels."""

    def __init__(self, t2s: sitk.Image):
        self._array = sitk.GetArrayViewFromImage(t2s)
        self._voxel_ml = float(np.prod(t2s.GetSpacing())) / 1000
        array = self._array
        faces = np.concatenate([array[[0, -1]].ravel(), array[:, [0, -1]].ravel(), array[:, :, [0, -1]].ravel()])
        values, counts = np.unique(faces, return_counts=True)
        self.value = float(values[counts.argmax()])
        self.voxels = array == values[counts.argmax()]  # bool (z, y, x): at the background value

    @functools.cached_property
    def count(self) -> int:
        return int(self.voxels.sum())

    @property
    def share(self) -> float:
        """Of the grid."""
        return self.count / self.voxels.size

    @functools.cached_property
    def cohesion(self) -> float:
        """Share of its voxels whose six neighbours are background too (the grid's faces do not cut it)."""
        return interior_count(self.voxels) / max(self.count, 1)

    @property
    def volume_ml(self) -> float:
        """Of what is not background."""
        return (self.voxels.size - self.count) * self._voxel_ml

    @functools.cached_property
    def dark_share(self) -> float:
        """Of what is not background, near the background value (air); 0 when the value is no minimum."""
        rest = self._array[~self.voxels]
        if not rest.size or rest.min() <= self.value:  # a background below everything: magnitude images, padding
            return 0.0
        above = rest.astype(np.float64) - self.value
        return float(np.mean(above < DARK * np.percentile(above, 99)))

    @property
    def constant(self) -> bool:
        return self.share >= MIN_BACKGROUND_SHARE and self.cohesion >= MIN_BACKGROUND_COHESION

    def brain(self) -> np.ndarray:
        """What is not background, holes filled (a microbleed's darkest voxels can reach its value)."""
        return fill_holes(~self.voxels)


def stripped_brain(t2s: sitk.Image) -> np.ndarray:
    """The brain of a skull-stripped T2* scan (bool): what is not its constant background, holes filled."""
    return Background(t2s).brain()


def is_skull_stripped(t2s: sitk.Image) -> tuple[bool, str, float]:
    """Whether the T2* scan is already skull-stripped (module docstring), why, in words, and the ml
    that are not background."""
    found = Background(t2s)
    stripped = found.constant and found.volume_ml <= MAX_BRAIN_ML and found.dark_share < MAX_DARK_SHARE
    return stripped, (f"{'skull-stripped' if stripped else 'not skull-stripped'} as read (background {found.value:g} on "
                      f"{found.share:.1%} of the {layout.REFERENCE_CHANNEL} grid, {found.cohesion:.0%} of it inside; "
                      f"{found.volume_ml:.0f} ml not background, {found.dark_share:.0%} of it dark; skull-stripped: "
                      f"a background at least {MIN_BACKGROUND_COHESION:.0%} inside, on at least "
                      f"{MIN_BACKGROUND_SHARE:.1%} of the grid, at most {MAX_BRAIN_ML:.0f} ml not background, "
                      f"less than {MAX_DARK_SHARE:.0%} of it dark)"), found.volume_ml


@functools.cache
def _deepbet(use_gpu: bool):
    from deepbet import BrainExtraction  # imports torch: only when a brain is to be extracted

    return BrainExtraction(no_gpu=not use_gpu)


def extract_brain(image: sitk.Image, use_gpu: bool = False) -> sitk.Image:
    """deepbet's brain mask (uint8, on the grid of `image`)."""
    import nibabel

    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)).transpose(2, 1, 0)  # → x, y, z
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK's LPS world → NIfTI's RAS
    _, mask, _ = _deepbet(use_gpu).run(nibabel.Nifti1Image(array, affine))
    result = sitk.GetImageFromArray(np.asarray(mask.dataobj).astype(np.uint8).transpose(2, 1, 0))
    result.CopyInformation(image)
    return result


def onto_grid(mask: sitk.Image, t2s: sitk.Image, transform: sitk.Transform | None = None) -> np.ndarray:
    """A mask on another grid → bool array on the T2* grid (`transform`: T2* points → the mask's,
    as registration.py finds them; none: placed by the headers)."""
    moved = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkFloat32), t2s, transform or sitk.Transform(),
                          sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(moved) >= 0.5


def given_mask_path(given: Path, case_id: str) -> Path:
    """--brain-mask: a file (one case) or a folder with <case>_brainmask.nii.gz per case."""
    return given / layout.brain_mask_name(case_id) if given.is_dir() else given


def read_given_mask(path: Path, t2s: sitk.Image) -> np.ndarray:
    if not path.is_file():
        raise CaseError(f"no brain mask {path.name} (--brain-mask {path.parent if path.parent.name else path})")
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError:
        raise CaseError(f"{path.name}: not a readable brain mask image") from None
    return onto_grid(mask, t2s)


def _volume_ml(mask: np.ndarray, t2s: sitk.Image) -> float:
    return float(mask.sum()) * float(np.prod(t2s.GetSpacing())) / 1000


def _too_small(volume: float, source: str) -> CaseError:
    return CaseError(f"brain mask ({source}) is {volume:.0f} ml on the T2S grid, less than {MIN_BRAIN_ML:.0f} ml: "
                     f"not a brain (wrong mask, or a scan that does not show the brain)")


def checked(mask: np.ndarray, t2s: sitk.Image, source: str, started: float) -> BrainMask:
    volume = _volume_ml(mask, t2s)
    if volume < MIN_BRAIN_ML:
        raise _too_small(volume, source)
    return BrainMask(mask, source, volume, time.perf_counter() - started)


def extracted_or_own(case_id: str, mask: np.ndarray, t2s: sitk.Image, source: str, started: float) -> BrainMask:
    """An extracted mask, or, when it is too small to be a brain and the scan has a constant
    background, the scan's own non-background (holes filled): deepbet fails on scans already
    stripped (a tight field of view hides the background share it looks for), and such a case was
    segmented as read before extraction existed. The source says which, for the log and the record."""
    volume = _volume_ml(mask, t2s)
    if volume >= MIN_BRAIN_ML:
        return BrainMask(mask, source, volume, time.perf_counter() - started, extracted=True)
    found = Background(t2s)
    if not found.constant:
        raise _too_small(volume, source)
    own = checked(found.brain(), t2s, f"the {layout.REFERENCE_CHANNEL} scan's own non-background (background "
                                      f"{found.value:g}), holes filled: {source} gave {volume:.0f} ml, less than "
                                      f"{MIN_BRAIN_ML:.0f} ml", started)
    log.warning("%s: brain mask: %s", case_id, own.source)
    return own


def find_brain_mask(case_id: str, t2s: sitk.Image, settings: BrainSettings,
                    extraction_channel: tuple[sitk.Image, sitk.Transform | None] | None = None) -> BrainMask:
    """The case's brain mask on the T2* grid (module docstring); `extraction_channel`: the scan of
    layout.BRAIN_EXTRACTION_CHANNEL as read, with the transform that puts it on the T2* grid, when
    the model reads that channel."""
    started = time.perf_counter()
    if settings.masking is BrainMasking.GIVEN:
        path = given_mask_path(settings.given, case_id)
        return checked(read_given_mask(path, t2s), t2s, f"given ({path.name})", started)
    if settings.masking is BrainMasking.SKULL_STRIPPED:
        return BrainMask(None, "skull-stripped (--skull-stripped)", Background(t2s).volume_ml, 0.0)
    if settings.masking is BrainMasking.AUTO:
        stripped, why, volume = is_skull_stripped(t2s)
        if stripped:
            return BrainMask(None, why, volume, time.perf_counter() - started)
    if extraction_channel is not None:
        image, transform = extraction_channel
        mask = onto_grid(extract_brain(image, settings.gpu_allowed), t2s, transform)
        return extracted_or_own(case_id, mask, t2s, f"deepbet on the {layout.BRAIN_EXTRACTION_CHANNEL}, onto the "
                                           f"{layout.REFERENCE_CHANNEL} grid", started)
    mask = sitk.GetArrayFromImage(extract_brain(t2s, settings.gpu_allowed)) > 0
    return extracted_or_own(case_id, mask, t2s, f"deepbet on the {layout.REFERENCE_CHANNEL}", started)
