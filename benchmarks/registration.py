"""Which rigid registration puts a T1 onto a T2* grid: SimpleITK's framework or itk-elastix,
measured on real anatomy against known transforms (issue "Raw scans in", item 1).

    apt-get install mricron-data                      # the Colin27 head (ch2) and its brain (ch2bet)
    .venv/bin/pip install itk-elastix==0.25.4         # optional: its rows are left out without it
    .venv/bin/python benchmarks/registration.py [--trials 6] [--seed 3]

Per trial: a random rigid transform (rotation up to 10° about a random axis through the brain's
centre, shift up to 10 mm); the fixed image is ch2 moved by it, resampled onto a T2*-like axial grid
(0.9 x 0.9 x 3 mm), its contrast changed (a T2*-like inversion of the tissue order, a bias field,
Rician noise; phantoms.t2s_like_copy) — the moving image is ch2 itself (1 mm T1, with skull, as a
raw scan). Ours (mixmicrobleednet.registration) starts from the headers' alignment, elastix from
its own default (centred by geometry); the error is the mean
and the maximum distance, in mm, between where the true and the found transform put the brain's
surface (ch2bet's boundary voxels). Prints per method the mean/max error over trials, the time,
and the share of trials within 1 mm (the issue's bar).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import SimpleITK as sitk

from mixmicrobleednet.evaluate import surface_error, surface_points
from mixmicrobleednet.phantoms import COLIN27_DIR, random_rigid, t2s_like_copy
from mixmicrobleednet.registration import register_rigid


def register_elastix(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """itk-elastix's default rigid parameter map (mutual information, 4 levels)."""
    import itk

    def to_itk(image: sitk.Image):
        converted = itk.GetImageFromArray(sitk.GetArrayFromImage(image).astype(np.float32))
        converted.SetSpacing(image.GetSpacing())
        converted.SetOrigin(image.GetOrigin())
        converted.SetDirection(itk.matrix_from_array(np.array(image.GetDirection()).reshape(3, 3)))
        return converted

    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("rigid"))
    _, result = itk.elastix_registration_method(to_itk(fixed), to_itk(moving), parameter_object=parameters,
                                                log_to_console=False)
    found = result.GetParameterMap(0)
    angles_and_shift = [float(v) for v in found["TransformParameters"]]
    centre = [float(v) for v in found["CenterOfRotationPoint"]]
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    rigid.SetRotation(*angles_and_shift[:3])
    rigid.SetTranslation(angles_and_shift[3:])
    return rigid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    head = sitk.ReadImage(str(COLIN27_DIR / "ch2.nii.gz"), sitk.sitkFloat32)
    brain = sitk.ReadImage(str(COLIN27_DIR / "ch2bet.nii.gz"))
    points = surface_points(brain)
    centre = np.mean(points, axis=0)
    # The header alone (no registration) shows what the error measure gives for a misaligned scan.
    methods = {"header only (no registration)": lambda fixed, moving: sitk.Euler3DTransform(),
               "ours: SimpleITK (registration.register_rigid)": lambda fixed, moving: register_rigid(moving, fixed).transform}
    try:
        import itk  # noqa: F401  (only whether it is installed)

        methods["itk-elastix (default rigid map)"] = register_elastix
    except ImportError:
        print("itk-elastix not installed: its rows are left out")
    rng = np.random.default_rng(args.seed)
    results = {name: [] for name in methods}
    for trial in range(args.trials):
        truth = random_rigid(rng, tuple(centre))
        fixed = t2s_like_copy(head, truth, rng)
        for name, register in methods.items():
            started = time.perf_counter()
            found = register(fixed, head)
            seconds = time.perf_counter() - started
            mean, worst = surface_error(truth, found, points)
            results[name].append((mean, worst, seconds))
            print(f"trial {trial + 1}: {name}: surface error mean {mean:.2f} mm, max {worst:.2f} mm, {seconds:.1f} s")
    for name, rows in results.items():
        rows = np.array(rows)
        print(f"{name}: mean error {rows[:, 0].mean():.2f} mm (worst trial {rows[:, 0].max():.2f}), max "
              f"{rows[:, 1].max():.2f} mm, {np.mean(rows[:, 0] <= 1.0) * 100:.0f}% of trials within 1 mm, "
              f"{np.median(rows[:, 2]):.1f} s median")


if __name__ == "__main__":
    main()
