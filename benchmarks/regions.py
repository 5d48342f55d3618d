"""Microbleed regions against the phantoms' known locations: the generator places every microbleed
in a lobar, deep or infratentorial place of its template (phantoms.py); the tool must find the same
category through its own atlas (AAL + JHU on Colin27, another brain than the phantoms' ICBM152)
registered onto the case. Prints the agreement per category and acquisition, the confusion table
and the time per case.

    .venv/bin/python benchmarks/regions.py --phantoms work/phantoms-regions --n 30 --seed 7
    .venv/bin/python benchmarks/regions.py --phantoms work/phantoms-regions --predictions OUTPUT
    .venv/bin/python benchmarks/regions.py --phantoms work/phantoms-regions --deformable
    .venv/bin/python benchmarks/regions.py --phantoms work/phantoms-regions --channel T2S

--channel T2S places the atlas on the T2* scan, as the tool does for a model without T1.

--deformable adds a B-spline registration after the tool's affine one (here only, to see whether it
would pay: the tool places the atlas affinely).

The phantoms are generated when the folder has none. With --predictions (a `mixmicrobleednet
predict` output folder of those phantoms), the regions in its lesion tables are compared too, for
every detected microbleed within 4 mm of a true one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixmicrobleednet import layout, phantoms, regions  # noqa: E402
from mixmicrobleednet.lesions import centroids_lps  # noqa: E402


def _confusion(truth: pd.Series, found: pd.Series) -> pd.DataFrame:
    return pd.crosstab(truth.rename("generator"), found.rename("tool")).reindex(
        index=regions.CATEGORIES, columns=regions.CATEGORIES, fill_value=0)


def _deformable(image: sitk.Image, placement: regions.AtlasPlacement, atlas: regions.Atlas) -> regions.AtlasPlacement:
    """The affine placement refined by a B-spline (about 25 mm between control points, Mattes MI,
    L-BFGS-B on a 4 mm copy)."""
    import time

    started = time.perf_counter()
    fixed = regions._isotropic(sitk.Cast(image, sitk.sitkFloat32), 2.0)
    mesh = [max(1, int(n * s / 25)) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=30)
    method.SetShrinkFactorsPerLevel([2])
    method.SetSmoothingSigmasPerLevel([2.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetMovingInitialTransform(placement.transform)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, atlas.template)
    both = sitk.CompositeTransform([placement.transform, bspline])  # the B-spline first, then the affine
    return regions.AtlasPlacement(both, placement.channel, method.GetMetricValue(), placement.volume_ratio,
                                  placement.seconds + time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=Path, required=True)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--predictions", type=Path)
    parser.add_argument("--deformable", action="store_true")
    parser.add_argument("--channel", default=layout.ATLAS_CHANNEL, choices=[layout.ATLAS_CHANNEL, layout.REFERENCE_CHANNEL])
    args = parser.parse_args()
    if not (args.phantoms / "microbleeds.csv").is_file():
        phantoms.generate(args.phantoms, args.n, args.seed)
    truth = pd.read_csv(args.phantoms / "microbleeds.csv")
    cases = pd.read_csv(args.phantoms / "phantoms.csv")
    atlas = regions.load_atlas(regions.atlas_folder())
    rows, detected, seconds = [], [], []
    for case in cases.itertuples():
        stem = layout.case_stem(case.subject)
        channel = args.channel
        image = sitk.ReadImage(str(args.phantoms / layout.input_name(stem, channel)), sitk.sitkFloat32)
        placement = regions.place_atlas(image, channel, atlas)
        if args.deformable:
            placement = _deformable(image, placement, atlas)
        seconds.append(placement.seconds)
        bleeds = truth[truth["subject"] == case.subject]
        if bleeds.empty:
            continue
        found = regions.locate(bleeds[["x_lps", "y_lps", "z_lps"]].to_numpy(), placement, atlas)
        rows.append(pd.DataFrame({"subject": case.subject, "cohort": case.cohort, "location": bleeds["location"].values,
                                  "category": found["region_category"].values, "true_region": bleeds["region"].values,
                                  "region": found["region"].values, "drawn_from": bleeds["drawn_from"].values}))
        table_path = args.predictions / layout.IMAGES_DIR / f"{stem}_lesions.csv" if args.predictions else None
        if table_path and table_path.is_file():
            table = pd.read_csv(table_path)
            centres = centroids_lps(table)
            for bleed in bleeds.itertuples():
                distance = np.linalg.norm(centres - [bleed.x_lps, bleed.y_lps, bleed.z_lps], axis=1)
                if len(distance) and distance.min() <= 4:
                    detected.append((bleed.location, table["region_category"].iloc[int(distance.argmin())]))
    result = pd.concat(rows, ignore_index=True)
    result["agree"] = result["location"] == result["category"]
    print(f"{len(cases)} phantoms, {len(result)} microbleeds; atlas placement {np.mean(seconds):.1f} s per case "
          f"(min {np.min(seconds):.1f}, max {np.max(seconds):.1f})")
    print(f"category agreement (true centres): {result['agree'].mean():.3f} ({result['agree'].sum()}/{len(result)})")
    for key in ("location", "cohort"):
        for value, group in result.groupby(key):
            print(f"  {key} {value}: {group['agree'].mean():.3f} ({group['agree'].sum()}/{len(group)})")
    print(f"MARS region agreement (true centres): {(result['region'] == result['true_region']).mean():.3f}")
    confused = result[result["region"] != result["true_region"]].groupby(["true_region", "region"]).size()
    if len(confused):
        print("regions told apart wrongly (true → tool: microbleeds):\n" + confused.to_string())
    # The deep and infratentorial pools are drawn around fixed MNI places, independent of the atlas.
    independent = result[result["drawn_from"] != "lobar"]
    print(f"agreement with the pool drawn from (deep and infratentorial pools, independent of the atlas): "
          f"{(independent['drawn_from'] == independent['category']).mean():.3f} of {len(independent)}")
    print(_confusion(result["location"], result["category"]).to_string())
    disagree = result[~result["agree"]]
    if len(disagree):
        print("disagreements:\n" + disagree.to_string(index=False))
    if detected:
        pairs = pd.DataFrame(detected, columns=["location", "category"])
        agree = (pairs["location"] == pairs["category"]).mean()
        print(f"category agreement (detected microbleeds, lesion tables): {agree:.3f} of {len(pairs)}")


if __name__ == "__main__":
    main()
