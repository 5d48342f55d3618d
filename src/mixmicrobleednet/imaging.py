"""Read and check channel images, align T1/T2 onto the T2* grid, mask them with the brain mask
(brain.py)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import layout
from .brain import BrainMask, BrainSettings, find_brain_mask, stripped_brain
from .cases import Case, CaseError
from .registration import Registration, register_rigid

log = logging.getLogger(__name__)

#: Grids that differ by less than this are the same grid written with rounding: the original
#: container copied the T2* header into T1/T2 unconditionally; we do so only within these bounds.
ORIGIN_TOLERANCE_VOXELS = 0.05
SPACING_TOLERANCE = 1e-4  # relative
DIRECTION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ChannelStack:
    """All channels of a case on the T2* grid, in network channel order."""

    case_id: str
    array: np.ndarray  # float32, (channel, z, y, x), channels in the model's order
    reference: sitk.Image  # the T2* image: its grid is the grid of every output
    alignment: dict[str, str]  # channel -> what was done to put it on the T2* grid
    registrations: dict[str, Registration]  # channel -> its registration, for those registered
    brain: BrainMask  # how the channels were brain-masked (mask None: skull-stripped as read)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.reference.GetSpacing()[::-1])

    def brain_region(self) -> np.ndarray:
        """The brain on the T2* grid (bool, z, y, x): the mask the channels were masked with, or a
        skull-stripped scan's own."""
        return self.brain.mask if self.brain.mask is not None else stripped_brain(self.reference)

    def channel_image(self, channel: str) -> sitk.Image:
        """One channel as it goes into the network (on the T2* grid, brain-masked)."""
        return image_like(self.array[list(self.alignment).index(channel)], self.reference)


def read_channel(path: Path, channel: str, needed_by: str = "the model") -> sitk.Image:
    """Read one channel and check that it is a usable 3D scalar image."""
    if not path.is_file():
        raise CaseError(f"missing {channel} channel: expected file {path.name}, needed by {needed_by}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        # ITK's last message line says why; it names the file by its full path, which differs
        # between a container's /input and the host, so keep the file name only.
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise CaseError(f"{path.name}: not a readable image ({reason.replace(str(path), path.name)})") from None
    if image.GetDimension() != 3:
        raise CaseError(f"{path.name}: {image.GetDimension()}D image, expected a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{path.name}: {image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1")
    array = sitk.GetArrayViewFromImage(image)
    non_finite = _count_non_finite(path, array)
    if non_finite:
        raise CaseError(f"{path.name}: {non_finite} NaN or infinite voxels")
    if not array.any():
        raise CaseError(f"{path.name}: every voxel is zero (empty {channel} channel)")
    return image


def _count_non_finite(path: Path, array: np.ndarray) -> int:
    # ITK's NIfTI reader turns NaN and inf into 0, which would hide them: read float NIfTI data
    # again with nibabel, which keeps them.
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel

        nifti = nibabel.load(str(path))
        if np.issubdtype(nifti.get_data_dtype(), np.floating):
            array = np.asanyarray(nifti.dataobj)
    return int(np.size(array) - np.count_nonzero(np.isfinite(array)))


def same_grid(image: sitk.Image, reference: sitk.Image) -> bool:
    """True when `image` is on the reference grid up to rounding of the header."""
    spacing = np.array(reference.GetSpacing())
    return (
        image.GetSize() == reference.GetSize()
        and np.allclose(image.GetSpacing(), spacing, rtol=SPACING_TOLERANCE, atol=0)
        and np.allclose(image.GetDirection(), reference.GetDirection(), rtol=0, atol=DIRECTION_TOLERANCE)
        and bool(np.all(np.abs(np.subtract(image.GetOrigin(), reference.GetOrigin())) <= ORIGIN_TOLERANCE_VOXELS * spacing))
    )


def align_to_reference(image: sitk.Image, reference: sitk.Image, register: bool = True,
                       channel: str = "channel") -> tuple[sitk.Image, str, Registration | None]:
    """Put a channel on the T2* grid: copy the header when only rounding differs (the seed's
    co-registered scans); else register it rigidly onto the T2* scan (registration.py) and
    resample (linear), or with register=False resample it as it lies in world space."""
    if same_grid(image, reference):
        aligned = sitk.Image(image)
        aligned.CopyInformation(reference)
        return aligned, "T2S header copied (grids equal up to rounding)", None
    registration = register_rigid(image, reference, channel) if register else None
    transform = registration.transform if registration else sitk.Transform()
    resampled = sitk.Resample(image, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    detail = (f"size {image.GetSize()} spacing {tuple(round(s, 4) for s in image.GetSpacing())} "
              f"origin {tuple(round(o, 3) for o in image.GetOrigin())}")
    action = registration.describe() if registration else "resampled onto the T2S grid as it lies in world space"
    return resampled, f"{action} (was {detail})", registration


def load_case(case: Case, channels: tuple[str, ...] = layout.CHANNELS, needed_by: str = "the model",
              register: bool = True, brain: BrainSettings = BrainSettings()) -> ChannelStack:
    """Read the channels a model needs (in its order), check them, align them on the T2* grid
    (align_to_reference) and mask them with the case's brain mask (brain.find_brain_mask);
    `needed_by` names the model in the message about a missing channel."""
    if case.input_problem:
        raise CaseError(case.input_problem)
    # Read at once (ITK reads and decompresses without the GIL); the T2*'s error first: without
    # it there is no case, whatever else is wrong.
    with ThreadPoolExecutor(len(channels), thread_name_prefix="read") as pool:
        reads = {channel: pool.submit(read_channel, case.channel_paths[channel], channel, needed_by)
                 for channel in sorted(channels, key=lambda c: c != layout.REFERENCE_CHANNEL)}
        images = {channel: read.result() for channel, read in reads.items()}
    reference = images[layout.REFERENCE_CHANNEL]
    aligned, alignment, registrations, transforms = {}, {}, {}, {}
    for channel in channels:
        if channel == layout.REFERENCE_CHANNEL:
            aligned[channel], alignment[channel] = reference, "reference grid"
        else:
            aligned[channel], alignment[channel], registration = align_to_reference(images[channel], reference,
                                                                                    register, channel)
            if registration:
                registrations[channel] = registration
                transforms[channel] = registration.transform
            elif alignment[channel].startswith("resampled"):
                log.warning("%s: %s %s", case.case_id, channel, alignment[channel])
    extraction = layout.BRAIN_EXTRACTION_CHANNEL
    try:
        brain_mask = find_brain_mask(case.case_id, reference, brain,
                                     (images[extraction], transforms.get(extraction)) if extraction in images else None)
    except CaseError as error:  # name the scan whose brain was not found
        raise CaseError(f"{case.channel_paths[layout.REFERENCE_CHANNEL].name}: {error}") from None
    # Filled channel by channel and masked on the way: one pass and one copy of each scan. Outside
    # the brain every channel is 0, as in the skull-stripped training scans.
    stack = np.empty((len(channels), *sitk.GetArrayViewFromImage(reference).shape), np.float32)
    for index, channel in enumerate(channels):
        image = aligned.pop(channel)  # alive while its view is read
        scan = sitk.GetArrayViewFromImage(image)
        if brain_mask.mask is None:
            stack[index] = scan
        else:
            np.multiply(scan, brain_mask.mask, out=stack[index], casting="unsafe")
    return ChannelStack(case.case_id, stack, reference, alignment, registrations, brain_mask)


def image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image with exactly the reference grid (size, spacing, origin, direction)."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image
