"""Raw scans against their preprocessed twins (issue "Raw scans in", acceptance): the same phantoms,
once skull-stripped with T1/T2 on the T2* grid, once as raw twins (the Colin27 head around the
brain, noise in the background, T1/T2 on 1 mm grids of their own, the subject moved between scans by
up to 10° and 10 mm; phantoms.make_case(raw=True)), each predicted by the same model.

    apt-get install mricron-data        # the Colin27 head the raw twins carry
    nohup .venv/bin/python benchmarks/raw_scans.py [--work work/raw-scans] [--n 10] [--seed 21] \
        [--cohort lowres] [--model models/phantom-t1-t2-t2s] > work/raw-scans.log 2>&1 &

Resumable (phantoms are kept, predictions run with --resume). The probability maps are kept
(--save-probabilities), so that benchmarks/edge_rule.py can re-draw both twins with the edge rule.
Prints per twin: sensitivity, false positives per scan, Dice (each twin with the tool's defaults:
the raw twins' brains are extracted, so the model's edge margin
(ModelFolder.extracted_brain_edge_margin_mm) applies to them), and the differences against the issue's bar (sensitivity no more than 0.05
lower, false positives per scan no more than 0.2 higher); then the brain masks' Dice against the
phantoms' true brain, and the mean seconds per stage of the raw runs (registration per channel,
brain mask, prediction).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.evaluate import evaluate_folders
from mixmicrobleednet.phantoms import generate

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "work" / "raw-scans")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--cohort", action="append", help="phantom acquisitions (default: lowres, the quickest)")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "phantom-t1-t2-t2s")
    args = parser.parse_args()
    cohorts = args.cohort or ["lowres"]
    summaries = {}
    for twin, raw in (("raw", True), ("preprocessed", False)):
        inputs, outputs = args.work / twin, args.work / f"{twin}-out"
        if not (inputs / "phantoms.csv").is_file():
            generate(inputs, args.n, args.seed, cohorts, raw)
        subprocess.run([sys.executable, "-m", "mixmicrobleednet.cli", "predict", "-i", str(inputs), "-o", str(outputs),
                        "--model", str(args.model), "--resume", "--fast", "--save-probabilities"], check=False)
        summaries[twin] = evaluate_folders(inputs, outputs / layout.IMAGES_DIR).loc["all"]
    print(f"\n{args.n} phantoms ({', '.join(cohorts)}), seed {args.seed}, model {args.model}, no mirroring")
    print(f"{'':14} {'sensitivity':>11} {'FP/scan':>8} {'Dice':>6}")
    for twin, s in sorted(summaries.items(), reverse=True):
        print(f"{twin:14} {s['sensitivity']:11.3f} {s['false_positives_per_scan']:8.2f} "
              f"{s['dice_cases_with_microbleeds']:6.3f}")
    sensitivity = summaries["raw"]["sensitivity"] - summaries["preprocessed"]["sensitivity"]
    false_positives = summaries["raw"]["false_positives_per_scan"] - summaries["preprocessed"]["false_positives_per_scan"]
    # The bar is "no worse": finding more microbleeds or marking fewer false ones on raw scans meets it.
    print(f"raw - preprocessed: sensitivity {sensitivity:+.3f} (bar: -0.05 or more: {'met' if sensitivity >= -0.05 else 'NOT met'}), "
          f"false positives per scan {false_positives:+.2f} (bar: +0.2 or less: {'met' if false_positives <= 0.2 else 'NOT met'})")

    dice, stages = [], {}
    for record_path in sorted((args.work / "raw-out" / layout.RECORDS_DIR).glob("*.json")):
        record = json.loads(record_path.read_text())
        for stage, seconds in record["stage_seconds"].items():
            stages.setdefault(stage, []).append(seconds)
        if "brain_mask" in record["outputs"]:
            found = sitk.GetArrayFromImage(sitk.ReadImage(str(args.work / "raw-out" / record["outputs"]["brain_mask"])))
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(args.work / "raw" / layout.brain_mask_name(record["case_id"]))))
            dice.append(2 * np.sum((found > 0) & (truth > 0)) / (np.sum(found > 0) + np.sum(truth > 0)))
    if dice:
        print(f"brain masks the tool extracted against the phantoms' brain: Dice mean {np.mean(dice):.3f}, "
              f"min {np.min(dice):.3f} over {len(dice)} cases")
    print("raw twins, mean seconds per stage: " + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
