"""Whether the skull-stripped rule (brain.is_skull_stripped) tells stripped scans from raw ones, on
real anatomy and on phantoms, whatever share of the grid the background fills (issue "Correct where
we said it was").

    apt-get install mricron-data          # the Colin27 head (ch2) and its brain (ch2bet)
    .venv/bin/python benchmarks/skull_stripped_rule.py

Raw (should be extracted): the Colin27 head with its zeroed background and with a scanner's Rician
noise; defaced (a box in front of and below the eyes zeroed, skull kept); padded with zeros; a 3 mm
T2*-like copy (phantoms.t2s_like_copy). Skull-stripped (should be taken as read): ch2bet cropped to
its brain's box at 0, 2 and 5 mm; an axial slab of 44 mm through the middle (the tight field of view
of the issue: 9 % background); thick (3 mm) and thin (0.5 mm) slices; z-scored (background 0 with
brain values on both sides of it); background -1 as int16; phantoms of each VALDO acquisition
cropped to their brain's box. Prints per scan: background share, how much of it lies inside, ml not
background, the rule's answer, and whether it is the expected one; exits 1 on any wrong answer.
"""

from __future__ import annotations

import sys

import numpy as np
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.brain import Background, is_skull_stripped
from mixmicrobleednet.phantoms import COHORTS, COLIN27_DIR, VALDO_COHORTS, _Template, make_case, t2s_like_copy


def crop_to_box(image: sitk.Image, inside: np.ndarray, margin_mm: float) -> sitk.Image:
    """The scan cropped to the box around `inside` (z, y, x) widened by `margin_mm`."""
    spacing_zyx = np.array(image.GetSpacing())[::-1]
    where = np.argwhere(inside)
    pad = np.ceil(margin_mm / spacing_zyx).astype(int)
    low = np.maximum(where.min(0) - pad, 0)
    high = np.minimum(where.max(0) + pad + 1, inside.shape)
    return image[int(low[2]):int(high[2]), int(low[1]):int(high[1]), int(low[0]):int(high[0])]


def resampled(image: sitk.Image, spacing_xyz: tuple[float, float, float]) -> sitk.Image:
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing_xyz)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(), spacing_xyz,
                         image.GetDirection(), 0.0, image.GetPixelID())


def with_noise(image: sitk.Image, sigma: float, seed: int) -> sitk.Image:
    """Rician noise everywhere, as a scanner's magnitude image has it."""
    rng = np.random.default_rng(seed)
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    noisy = np.hypot(array + sigma * rng.standard_normal(array.shape), sigma * rng.standard_normal(array.shape))
    result = sitk.GetImageFromArray(noisy.astype(np.float32))
    result.CopyInformation(image)
    return result


def from_array(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(like)
    return result


def raw_scans() -> dict[str, sitk.Image]:
    head = sitk.Cast(sitk.ReadImage(str(COLIN27_DIR / "ch2.nii.gz")), sitk.sitkFloat32)
    sigma = 0.02 * float(np.percentile(sitk.GetArrayViewFromImage(head), 99))
    noisy = with_noise(head, sigma, 1)
    array = sitk.GetArrayFromImage(noisy)
    nz, ny, nx = array.shape
    defaced = array.copy()
    # ch2 is RAS-stored with +y anterior: the front third below the eyes' level (z below 40 %)
    defaced[: int(0.4 * nz), int(0.6 * ny):, :] = 0
    zeroed_defaced = sitk.GetArrayFromImage(head).copy()
    zeroed_defaced[: int(0.4 * nz), int(0.6 * ny):, :] = 0
    padded = sitk.ConstantPad(noisy, [20, 20, 20], [20, 20, 20], 0.0)
    middle = nz // 2 + 10
    slab = sitk.ConstantPad(noisy[:, :, middle - 22:middle + 22], [20, 20, 20], [20, 20, 20], 0.0)
    return {"Colin27 head, zeroed background": head,
            "Colin27 head, scanner noise": noisy,
            "Colin27 head, noise, defaced": from_array(defaced, noisy),
            "Colin27 head, zeroed background, defaced": from_array(zeroed_defaced, head),
            "Colin27 head, noise, padded with zeros (20 voxels)": padded,
            "Colin27 head, noise, 44 mm axial slab padded with zeros": slab,
            "Colin27 head, T2*-like 0.9x0.9x3 mm copy": t2s_like_copy(head, sitk.Transform(), np.random.default_rng(2))}


def stripped_scans() -> dict[str, sitk.Image]:
    brain = sitk.Cast(sitk.ReadImage(str(COLIN27_DIR / "ch2bet.nii.gz")), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(brain)
    inside = array > 0
    scans = {f"ch2bet, cropped to its box + {m} mm": crop_to_box(brain, inside, m) for m in (0, 2, 5)}
    scans["ch2bet, uncropped"] = brain
    middle = int(np.argwhere(inside)[:, 0].mean())
    slab = crop_to_box(brain, inside, 0)[:, :, middle - 22 - int(np.argwhere(inside)[:, 0].min()):
                                         middle + 22 - int(np.argwhere(inside)[:, 0].min())]
    scans["ch2bet, 44 mm axial slab, cropped"] = slab
    scans["ch2bet, slab, 0.48 x 0.48 x 0.78 mm"] = resampled(slab, (0.48, 0.48, 0.78))
    nx, ny, _ = slab.GetSize()  # the field of view: 123 x 108 mm, narrower than the brain
    tight = slab[(nx - 123) // 2:(nx + 123) // 2, (ny - 108) // 2:(ny + 108) // 2, :]
    scans["ch2bet, slab, field of view 123 x 108 mm"] = resampled(tight, (0.48, 0.48, 0.78))
    scans["ch2bet, cropped, 1 x 1 x 3 mm"] = resampled(crop_to_box(brain, inside, 2), (1.0, 1.0, 3.0))
    scans["ch2bet, cropped, 0.5 mm isotropic"] = resampled(crop_to_box(brain, inside, 2), (0.5, 0.5, 0.5))
    zscored = np.where(inside, (array - array[inside].mean()) / array[inside].std(), 0).astype(np.float32)
    scans["ch2bet, z-scored (background 0, brain on both sides)"] = crop_to_box(from_array(zscored, brain), inside, 1)
    minus = np.where(inside, array, -1).astype(np.int16)
    scans["ch2bet, background -1, int16"] = crop_to_box(from_array(minus, brain), inside, 1)
    template = _Template()
    for index, name in enumerate(VALDO_COHORTS):
        channels, _, _, mask, _ = make_case(f"r{index}", COHORTS[name], 3, np.random.default_rng([77, index]), template)
        t2s = channels[layout.REFERENCE_CHANNEL]
        inside = sitk.GetArrayViewFromImage(mask) > 0
        for margin in (0, 3):
            scans[f"phantom {name}, cropped to its brain's box + {margin} mm"] = crop_to_box(t2s, inside, margin)
    return scans


def rule_before(image: sitk.Image) -> bool:
    """The rule this benchmark replaced: the minimum on at least 20 % of the grid, at most 3,000 ml above it."""
    array = sitk.GetArrayViewFromImage(image)
    above = int(np.count_nonzero(array > array.min()))
    return 1 - above / array.size >= 0.2 and above * float(np.prod(image.GetSpacing())) / 1000 <= 3000


def main() -> int:
    wrong = 0
    print(f"{'scan':58s} {'bg share':>8s} {'inside':>7s} {'ml':>6s} {'dark':>5s}  answer         (rule before)")
    for expected, scans in ((False, raw_scans()), (True, stripped_scans())):
        for name, image in scans.items():
            found = Background(image)
            stripped = is_skull_stripped(image)[0]
            wrong += stripped != expected
            print(f"{name:58s} {found.share:8.1%} {found.cohesion:7.0%} {found.volume_ml:6.0f} {found.dark_share:5.0%}  "
                  f"{'stripped' if stripped else 'raw':8s} {'ok' if stripped == expected else 'WRONG':5s}  "
                  f"({'stripped' if rule_before(image) else 'raw'})")
    print(f"{wrong} wrong")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
