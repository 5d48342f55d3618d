"""Rigid registration of a channel (T1, T2) onto the T2* scan, for channels not on its grid.

SimpleITK's registration framework: Euler 3D, Mattes mutual information (T1/T2 and T2* have
different contrasts), regular-step gradient descent over 3 resolution levels, started from the
scanner's own alignment (the headers), so scans of one session start close. Chosen by measuring
on the Colin27 head against known transforms (benchmarks/registration.py, 6 trials of 3–10° and
3–10 mm): ours put the brain surface 0.11 mm (mean) from where it belongs in 8.6 s per channel,
itk-elastix's rigid map 0.08 mm in 4.5 s; both far inside the 1 mm bar. SimpleITK is already a
dependency; itk-elastix would add ITK's Python wrapping, 1.6 GB installed, to every image for 4 s.

A registration that does not make the images more alike (mutual information) than the headers'
alignment is dropped for the headers' (already co-registered scans on another grid). One that
moves the channel further than scans of one session plausibly differ fails the case with what was
found, rather than giving a mask from a bad alignment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .cases import CaseError

#: Most a channel of the same session is moved from its header's position (beyond: not accepted).
MAX_ROTATION_DEGREES = 20.0
MAX_SHIFT_MM = 30.0
#: Coarsest level has at least this many voxels along the shortest axis of the T2* grid.
MIN_LEVEL_VOXELS = 8


@dataclass(frozen=True)
class Registration:
    transform: sitk.Euler3DTransform  # maps T2* grid points to the channel's (ITK's fixed → moving)
    rotation_degrees: float
    shift_mm: float  # how far the T2* grid's centre moves
    mutual_information_before: float  # Mattes MI with the headers' alignment (ITK's sign: lower is better)
    mutual_information_after: float
    seconds: float

    def summary(self) -> str:
        return (f"rotation {self.rotation_degrees:.1f}°, shift {self.shift_mm:.1f} mm, mutual information "
                f"{self.mutual_information_before:.3f} → {self.mutual_information_after:.3f}, {self.seconds:.1f} s")

    def describe(self) -> str:
        return f"registered rigidly onto the T2S grid ({self.summary()})"

    def as_record(self) -> dict:
        return {"parameters": [round(p, 6) for p in self.transform.GetParameters()],
                "centre_mm": [round(c, 3) for c in self.transform.GetCenter()],
                "rotation_degrees": round(self.rotation_degrees, 3), "shift_mm": round(self.shift_mm, 3),
                "mutual_information_before": round(self.mutual_information_before, 5),
                "mutual_information_after": round(self.mutual_information_after, 5), "seconds": round(self.seconds, 2)}


def mutual_information_method(fixed: sitk.Image, sampling: float, learning_rate: float, iterations: int,
                              smoothing_mm: float) -> sitk.ImageRegistrationMethod:
    """SimpleITK's registration as ours use it (channels onto the T2*, the atlas onto a case): Mattes
    mutual information on a random sample with a fixed seed (the same case gives the same result),
    regular-step gradient descent, levels shrunk 4, 2, 1 (a coarse level only where the fixed image
    keeps MIN_LEVEL_VOXELS along its shortest axis), smoothed by smoothing_mm per 2 of shrink."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=1e-4,
                                                    numberOfIterations=iterations, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    shrink = [f for f in (4, 2) if min(fixed.GetSize()) // f >= MIN_LEVEL_VOXELS] + [1]
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([smoothing_mm * f / 2 if f > 1 else 0.0 for f in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def register_rigid(moving: sitk.Image, fixed: sitk.Image, channel: str = "channel") -> Registration:
    """The rigid transform that puts `moving` onto `fixed` (the T2*); CaseError when it is not
    plausible (module docstring)."""
    started = time.perf_counter()
    fixed, moving = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)
    method = mutual_information_method(fixed, sampling=0.02, learning_rate=2.0, iterations=200, smoothing_mm=1.0)
    method.SetInitialTransform(initial, inPlace=False)
    before = method.MetricEvaluate(fixed, moving)
    found = sitk.Euler3DTransform()
    found.SetCenter(centre)
    found.SetParameters(method.Execute(fixed, moving).GetParameters())
    method.SetInitialTransform(found, inPlace=False)
    after = method.MetricEvaluate(fixed, moving)
    if after > before:  # no better than the headers (scans already aligned, on another grid): keep them
        found, after = initial, before
    matrix = np.array(found.GetMatrix()).reshape(3, 3)
    rotation = math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0))))
    shift = float(np.linalg.norm(found.GetTranslation()))  # the centre is the T2* grid's: its displacement
    registration = Registration(found, rotation, shift, before, after, time.perf_counter() - started)
    checks = ((rotation > MAX_ROTATION_DEGREES, f"rotation {rotation:.1f}° > {MAX_ROTATION_DEGREES:.0f}°"),
              (shift > MAX_SHIFT_MM, f"shift {shift:.1f} mm > {MAX_SHIFT_MM:.0f} mm"))
    problems = [text for failed, text in checks if failed]
    if problems:
        raise CaseError(f"{channel}: registration onto the T2S scan failed its check ({'; '.join(problems)}): "
                        f"are both scans of the same subject and session, and do they overlap?")
    return registration
