"""What tells a false mark from a microbleed (#32): per-mark image features on held-out draws.

    nice .venv/bin/python benchmarks/held_out.py --set default-validation --set varied-validation \
        --set raw-cortex-validation --model models/phantom-t1-t2-t2s --margins 2
    nice .venv/bin/python benchmarks/mark_features.py --set default-validation --set varied-validation \
        --set raw-cortex-validation --model models/phantom-t1-t2-t2s [--judge default --judge varied --judge raw-cortex]

Reads held_out.py's saved probabilities (work/held-out/SET/MODEL), re-draws each case's marks with the
tool's default rule for that set (the model's edge margin where the tool extracted the brain; no mimic
check) and measures each mark on the T2* scan around it (mimics.mark_features: dark extent, blobness,
elongation, radius). Prints each feature's ROC AUC for "is a microbleed", and a logistic regression on
them cross-validated by case (GroupKFold): how many false marks each probability cut removes and how
many microbleeds it keeps, and the reliability of its probability. The regression fitted on every
validation mark, cut at --cut, is the model's mimic check: --write puts it into the model folder's
plans.json (modelfolder.MIMIC_CHECK), --judge applies it once to held-out draws (held_out.py's saved
predictions of those). Writes work/held-out/marks.csv (the validation marks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from edge_rule import labelled_stems, redrawn_lesions
from held_out import SETS, predictions_folder, reliability
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from mixmicrobleednet import layout
from mixmicrobleednet.brain import stripped_brain
from mixmicrobleednet.lesions import LesionSettings, label_microbleeds
from mixmicrobleednet.mimics import mark_features
from mixmicrobleednet.modelfolder import MIMIC_FEATURES, MimicCheck, read_model_folder
from mixmicrobleednet.train import write_mimic_check

REPO = Path(__file__).resolve().parents[1]
FEATURES = list(MIMIC_FEATURES)
PROBABILITY_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the regression's probability spans 0-1


def set_marks(name: str, model: Path, work: Path) -> list[dict]:
    """Every mark of a set's saved predictions, its features, and what it is (microbleed or a mimic)."""
    phantoms, output = work / name / "phantoms", predictions_folder(work, name, model)
    # the tool's default rule: the model's own margin where the tool extracted the brain (the raw sets)
    rule = LesionSettings().for_brain(bool(SETS[name].get("raw")), read_model_folder(model).extracted_brain_edge_margin_mm)
    rows = []
    for stem in labelled_stems(phantoms):
        reference, mimics, _, (lesions,) = redrawn_lesions(phantoms, output, stem, [rule])
        scan = sitk.ReadImage(str(phantoms / layout.input_name(stem, layout.REFERENCE_CHANNEL)))
        t2s, spacing = sitk.GetArrayFromImage(scan), np.array(scan.GetSpacing()[::-1])
        extracted = output / layout.seed_output_paths(stem)["brain_mask"]
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(extracted))) > 0 if extracted.is_file() else stripped_brain(scan)
        truth = sitk.GetArrayViewFromImage(reference)
        components, count = label_microbleeds(lesions.mask)
        for component in range(1, count + 1):
            voxels = np.argwhere(components == component)
            at = tuple(voxels.T)
            mimic = np.bincount(mimics[at].astype(int), minlength=len(layout.MIMIC_LABELS) + 1)[1:]
            rows.append({"set": name, "stem": stem, "microbleed": bool(truth[at].any()),
                         "mimic": layout.MIMIC_LABELS[int(mimic.argmax()) + 1] if mimic.any() else "other",
                         **mark_features(t2s, brain, voxels, spacing)})
    return rows


def _reliability(truth: np.ndarray, probability: np.ndarray) -> pd.DataFrame:
    """held_out.reliability of the regression's probability, over the whole 0-1 range."""
    marks = pd.DataFrame({"model": "regression", "probability": probability, "microbleed": truth})
    return reliability(marks, PROBABILITY_BINS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", choices=list(SETS), required=True, help="validation draws")
    parser.add_argument("--judge", action="append", choices=list(SETS), default=[],
                        help="held-out draws: the regression fitted on every --set mark, cut at --cut, judged once")
    parser.add_argument("--cut", type=float, default=0.5, help="the probability a kept mark needs (chosen on --set)")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "phantom-t1-t2-t2s",
                        help="the model folder whose predictions held_out.py saved")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "held-out")
    parser.add_argument("--write", action="store_true",
                        help="write the fitted regression and --cut into the --model folder as its mimic check")
    args = parser.parse_args(argv)
    pd.set_option("display.width", 250)
    marks = pd.DataFrame([row for name in args.set for row in set_marks(name, args.model, args.work)])
    marks.to_csv(args.work / "marks.csv", index=False)
    print(marks.groupby(["microbleed", "mimic"])[["radius_mm", "extent_mm", "blobness"]].median().round(2).to_string())
    print("\nROC AUC for 'is a microbleed':",
          ", ".join(f"{f} {roc_auc_score(marks['microbleed'], marks[f]):.3f}" for f in ["extent_mm", *FEATURES]))
    truth = marks["microbleed"].to_numpy()
    probability = cross_val_predict(LogisticRegression(), marks[FEATURES], truth, groups=marks["stem"],
                                    cv=GroupKFold(5), method="predict_proba")[:, 1]
    print(f"\nlogistic regression on {', '.join(FEATURES)}, cross-validated by case: ROC AUC "
          f"{roc_auc_score(truth, probability):.3f}; {truth.sum()} microbleeds, {(~truth).sum()} false marks")
    for cut in (0.2, 0.3, 0.5):
        kept = probability >= cut
        print(f"  keep p >= {cut}: microbleeds kept {(kept & truth).sum()} of {truth.sum()}, "
              f"false marks kept {(kept & ~truth).sum()} of {(~truth).sum()}")
    print(_reliability(truth, probability).round(2).to_string())
    if not (args.judge or args.write):
        return 0
    fitted = LogisticRegression().fit(marks[FEATURES], truth)
    check = MimicCheck({f: round(float(c), 4) for f, c in zip(FEATURES, fitted.coef_[0])},
                       round(float(fitted.intercept_[0]), 4), args.cut,
                       f"{len(marks)} marks ({truth.sum()} microbleeds) of validation draws {', '.join(args.set)} "
                       "(benchmarks/held_out.py SETS)")
    print(f"\nfitted on all {len(marks)} validation marks: {check.coefficients}, intercept {check.intercept}; "
          f"cut {args.cut}")
    if args.write:
        write_mimic_check(args.model, check)
        print(f"written into {args.model}: {read_model_folder(args.model).mimic_check}")
    for name in args.judge:
        judged = pd.DataFrame(set_marks(name, args.model, args.work))
        scans = len(labelled_stems(args.work / name / "phantoms"))
        truth = judged["microbleed"].to_numpy()
        probability = judged[FEATURES].apply(lambda row: check.probability(row.to_dict()), axis=1).to_numpy()
        kept = probability >= args.cut
        print(f"{name} (held-out, {scans} scans): microbleed marks kept {(kept & truth).sum()} of {truth.sum()}; "
              f"false marks {(~truth).sum()} -> {(kept & ~truth).sum()} ({(~truth).sum() / scans:.2f} -> "
              f"{(kept & ~truth).sum() / scans:.2f} per scan); removed: "
              f"{judged[~kept & ~truth]['mimic'].value_counts().to_dict()}, lost: "
              f"{judged[~kept & truth][['radius_mm', 'extent_mm', 'blobness']].round(2).to_dict('records')}; "
              "reliability:")
        print(_reliability(truth, probability).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
