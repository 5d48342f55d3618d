"""The edge rule (`--edge-margin-mm`) measured on phantoms: which margin, and what it costs.

    .venv/bin/mixmicrobleednet predict -i work/phantoms-varied-val -o work/pred-val-phantom-t2s \
        --model models/phantom-t2s --fast --no-qc --no-regions --save-probabilities
    .venv/bin/python benchmarks/edge_rule.py --labels work/phantoms-varied-val \
        --predictions work/pred-val-phantom-t2s [--margins 0 1 1.5 2 2.5 3 4] [--by-cohort] [--mimic-check MODEL]

Re-draws each case's microbleeds from its saved probability map with lesions.extract_lesions at
every margin (the brain as the pipeline found it: the mask it extracted and wrote beside the
prediction for a raw scan, else the skull-stripped T2* scan's own) and scores
them against the phantoms' labels with evaluate.case_measures: sensitivity, false positives per
scan by what they sit on, Dice. Choose the margin on a validation draw, then run the held-out set
once with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.brain import stripped_brain
from mixmicrobleednet.evaluate import case_measures, summarise
from mixmicrobleednet.lesions import LesionSettings, extract_lesions
from mixmicrobleednet.mimics import MarkJudge
from mixmicrobleednet.modelfolder import MimicCheck, read_model_folder


def labelled_stems(folder: Path) -> list[str]:
    """The case stems of a folder of phantoms: those with a label."""
    return sorted(filter(None, (layout.parse_label_name(p.name) for p in folder.glob("*.nii.gz"))))


def redrawn_lesions(labels: Path, predictions: Path, stem: str, rules: list[LesionSettings],
                    check: MimicCheck | None = None):
    """A case's label, mimic map and probability map, and its microbleeds re-drawn by each rule (and
    the model's mimic check, as the tool applies it, when given)."""
    reference = sitk.ReadImage(str(labels / layout.label_name(stem)))
    t2s = sitk.ReadImage(str(labels / layout.input_name(stem, layout.REFERENCE_CHANNEL)))
    outputs = layout.seed_output_paths(stem)
    probabilities = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / outputs["probability"])))
    mimics = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / layout.mimic_map_name(stem))))
    extracted = predictions / outputs["brain_mask"]
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(extracted))) > 0 if extracted.is_file() \
        else stripped_brain(t2s)
    judge = check and MarkJudge.on_scan(check, t2s, brain)
    return reference, mimics, probabilities, [extract_lesions(probabilities, t2s, rule, brain, judge) for rule in rules]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, required=True, help="phantoms: scans, labels and mimic maps")
    parser.add_argument("--predictions", type=Path, required=True, help="an output folder of --save-probabilities")
    parser.add_argument("--margins", type=float, nargs="+", default=[0, 1, 1.5, 2, 2.5, 3, 4])
    parser.add_argument("--by-cohort", action="store_true", help="also per acquisition (the phantoms' phantoms.csv)")
    parser.add_argument("--mimic-check", type=Path, metavar="MODEL",
                        help="also apply this model folder's mimic check, as the tool does")
    args = parser.parse_args(argv)
    check = read_model_folder(args.mimic_check).mimic_check if args.mimic_check else None
    rows = []
    for stem in labelled_stems(args.labels):
        rules = [LesionSettings(edge_margin_mm=margin) for margin in args.margins]
        reference, mimics, _, redrawn = redrawn_lesions(args.labels, args.predictions, stem, rules, check)
        for margin, lesions in zip(args.margins, redrawn):
            rows.append({"margin_mm": margin, "subject": layout.parse_stem(stem)["subject"], **case_measures(
                sitk.GetArrayViewFromImage(reference), lesions.mask, float(np.prod(reference.GetSpacing())), mimics)})
    per_case = pd.DataFrame(rows)
    summaries = {(margin, "all"): summarise(group) for margin, group in per_case.groupby("margin_mm")}
    if args.by_cohort:
        per_case = per_case.merge(pd.read_csv(args.labels / "phantoms.csv")[["subject", "cohort"]], on="subject")
        summaries.update({key: summarise(group) for key, group in per_case.groupby(["margin_mm", "cohort"])})
    table = pd.DataFrame(summaries).T.sort_index()
    columns = ["cases", "reference_microbleeds", "sensitivity", "false_positives_per_scan",
               *[c for c in table.columns if c.startswith("false_positives_") and c.endswith("_per_scan")
                 and c != "false_positives_per_scan"], "dice_cases_with_microbleeds"]
    pd.set_option("display.width", 250)
    print(table[columns].astype(float).round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
