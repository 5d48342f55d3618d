"""The brain mask of a case on the T2* grid: found in the scans when they are already skull-stripped,
given by the user, or extracted by deepbet; every channel is then masked with it, as the model saw
in training (the 2021 challenge's scans were skull-stripped).

Whether a T2* scan is skull-stripped: its background is one constant value (a scanner's noise is
not) filling at least a fifth of the grid, and what lies above that value adds up to at most
3,000 ml — a brain with its CSF is 1,100–2,000 ml (phantoms up to 2,500), a head with skull and
scalp well over 3,500 (the Colin27 head, background already zeroed: 4,152 ml).

Extraction: deepbet 1.0.2 (MIT; two small networks, weights inside its wheel, so nothing is
downloaded), run on the T1 in its own grid when the model reads a T1 (deepbet was trained on T1;
on the Colin27 head Dice 0.94 against ch2bet), else on the T2* scan itself (measured lower; see
benchmarks/brain_extraction.py and the README). The mask is brought onto the T2* grid by the
transform that put the T1 there (registration.py), so it lies where the registered T1 lies.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import layout
from .cases import CaseError

#: Above this volume (ml) of non-background voxels a T2* scan holds more than a brain.
MAX_BRAIN_ML = 3000.0
#: A skull-stripped scan's constant background fills at least this share of its grid.
MIN_BACKGROUND_SHARE = 0.2
#: A brain mask smaller than this (ml) is not a brain: extraction failed, or the wrong mask was given.
MIN_BRAIN_ML = 300.0


class BrainMasking(str, Enum):
    """How a run gets brain masks (--skull-stripped, --extract-brain, --brain-mask)."""

    AUTO = "auto"  # extract when the T2* scan is not skull-stripped
    SKULL_STRIPPED = "skull-stripped"  # the user says so: take the scans as they are
    EXTRACT = "extract"  # always extract
    GIVEN = "given"  # the user's mask files


@dataclass(frozen=True)
class BrainSettings:
    masking: BrainMasking = BrainMasking.AUTO
    given: Path | None = None  # --brain-mask FILE or FOLDER (masking GIVEN)
    gpu_allowed: bool = True  # False with --device cpu

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


def background_volume(t2s: sitk.Image) -> tuple[float, float]:
    """(share of the grid at the background value, volume in ml above it)."""
    array = sitk.GetArrayViewFromImage(t2s)
    above = int(np.count_nonzero(array > array.min()))
    return 1 - above / array.size, above * float(np.prod(t2s.GetSpacing())) / 1000


def stripped_brain(t2s: sitk.Image) -> np.ndarray:
    """The brain of a skull-stripped T2* scan (bool): what lies above its constant background, holes
    filled (a microbleed's darkest voxels can reach the background value)."""
    array = sitk.GetArrayViewFromImage(t2s)
    return ndimage.binary_fill_holes(array > array.min())


def is_skull_stripped(t2s: sitk.Image) -> tuple[bool, str, float]:
    """Whether the T2* scan is already skull-stripped (module docstring), why, in words, and the ml
    above its background."""
    share, volume = background_volume(t2s)
    stripped = share >= MIN_BACKGROUND_SHARE and volume <= MAX_BRAIN_ML
    return stripped, (f"{'skull-stripped' if stripped else 'not skull-stripped'} as read (constant background on "
                      f"{share:.0%} of the T2S grid, {volume:.0f} ml above it; skull-stripped: at least "
                      f"{MIN_BACKGROUND_SHARE:.0%} and at most {MAX_BRAIN_ML:.0f} ml)"), volume


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


def checked(mask: np.ndarray, t2s: sitk.Image, source: str, started: float, extracted: bool = False) -> BrainMask:
    volume = float(mask.sum()) * float(np.prod(t2s.GetSpacing())) / 1000
    if volume < MIN_BRAIN_ML:
        raise CaseError(f"brain mask ({source}) is {volume:.0f} ml on the T2S grid, less than {MIN_BRAIN_ML:.0f} ml: "
                        f"not a brain (wrong mask, or a scan that does not show the brain)")
    return BrainMask(mask, source, volume, time.perf_counter() - started, extracted)


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
        return BrainMask(None, "skull-stripped (--skull-stripped)", background_volume(t2s)[1], 0.0)
    if settings.masking is BrainMasking.AUTO:
        stripped, why, volume = is_skull_stripped(t2s)
        if stripped:
            return BrainMask(None, why, volume, time.perf_counter() - started)
    if extraction_channel is not None:
        image, transform = extraction_channel
        mask = onto_grid(extract_brain(image, settings.gpu_allowed), t2s, transform)
        return checked(mask, t2s, f"deepbet on the {layout.BRAIN_EXTRACTION_CHANNEL}, onto the "
                                  f"{layout.REFERENCE_CHANNEL} grid", started, extracted=True)
    mask = sitk.GetArrayFromImage(extract_brain(t2s, settings.gpu_allowed)) > 0
    return checked(mask, t2s, f"deepbet on the {layout.REFERENCE_CHANNEL}", started, extracted=True)
