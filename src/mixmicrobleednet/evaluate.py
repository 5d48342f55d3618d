"""VALDO 2021 Task 2 measures of predicted microbleed masks against reference masks.

Per case:
- dice: voxel Dice; NaN when reference and prediction are both empty (nothing to overlap).
- volume_difference_mm3: |predicted - reference| volume (the absolute volume difference).
- count_difference: |predicted - reference| number of microbleeds.
- microbleed-level detection with connected components (26-connectivity): a reference microbleed
  is detected (TP) when any predicted voxel overlaps it, otherwise FN; a predicted component that
  overlaps no reference microbleed is a false positive (FP).
  precision = TP_pred / n_pred, recall = TP / n_ref, F1 of the two; each NaN when undefined
  (no predictions / no reference microbleeds) and left out of the means.
- voxel_fdr and voxel_fnr: the voxel false discovery and false negative rates that nnU-Net's
  summary reports, which are what the MixMicrobleedNet paper's FDR 0.16 / FNR 0.15 are.

Overall, counts are pooled over cases (sensitivity = all TP / all reference microbleeds,
false positives per scan = all FP / cases); Dice is the mean over cases with microbleeds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from . import layout
from .lesions import label_microbleeds

log = logging.getLogger(__name__)


def case_measures(reference: np.ndarray, prediction: np.ndarray, voxel_volume_mm3: float) -> dict:
    reference, prediction = reference > 0, prediction > 0
    ref_labels, n_ref = label_microbleeds(reference)
    pred_labels, n_pred = label_microbleeds(prediction)
    detected = len(np.unique(ref_labels[prediction & reference]))
    true_predicted = len(np.unique(pred_labels[prediction & reference]))
    overlap = int((reference & prediction).sum())
    n_ref_vox, n_pred_vox = int(reference.sum()), int(prediction.sum())
    precision = true_predicted / n_pred if n_pred else np.nan
    recall = detected / n_ref if n_ref else np.nan
    return {
        "n_reference": n_ref,
        "n_predicted": n_pred,
        "true_positives": detected,
        "false_negatives": n_ref - detected,
        "false_positives": n_pred - true_predicted,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else np.nan,
        "count_difference": abs(n_pred - n_ref),
        "dice": 2 * overlap / (n_ref_vox + n_pred_vox) if n_ref_vox + n_pred_vox else np.nan,
        "reference_volume_mm3": n_ref_vox * voxel_volume_mm3,
        "predicted_volume_mm3": n_pred_vox * voxel_volume_mm3,
        "volume_difference_mm3": abs(n_pred_vox - n_ref_vox) * voxel_volume_mm3,
        "voxel_fdr": (n_pred_vox - overlap) / n_pred_vox if n_pred_vox else np.nan,
        "voxel_fnr": (n_ref_vox - overlap) / n_ref_vox if n_ref_vox else np.nan,
    }


def summarise(per_case: pd.DataFrame) -> dict:
    """Pooled detection counts and mean voxel measures over a group of cases."""
    tp, fn, fp = (int(per_case[c].sum()) for c in ("true_positives", "false_negatives", "false_positives"))
    n_pred = int(per_case["n_predicted"].sum())
    with_bleeds = per_case[per_case["n_reference"] > 0]
    sensitivity = tp / (tp + fn) if tp + fn else np.nan
    precision = (n_pred - fp) / n_pred if n_pred else np.nan
    return {
        "cases": len(per_case),
        "cases_with_microbleeds": len(with_bleeds),
        "reference_microbleeds": tp + fn,
        "sensitivity": sensitivity,
        "false_positives_per_scan": fp / len(per_case) if len(per_case) else np.nan,
        "precision": precision,
        "f1": 2 * precision * sensitivity / (precision + sensitivity) if precision + sensitivity > 0 else np.nan,
        "dice_cases_with_microbleeds": float(with_bleeds["dice"].mean()) if len(with_bleeds) else np.nan,
        "mean_count_difference": float(per_case["count_difference"].mean()),
        "mean_volume_difference_mm3": float(per_case["volume_difference_mm3"].mean()),
        "voxel_fdr": float(per_case["voxel_fdr"].mean()),
        "voxel_fnr": float(per_case["voxel_fnr"].mean()),
    }


def _find_predictions(folder: Path) -> dict[str, Path]:
    for candidate in (folder / layout.IMAGES_DIR, folder):
        found = {layout.parse_prediction_name(p.name): p for p in candidate.glob("*.nii.gz")}
        found.pop(None, None)
        if found:
            return found
    return {}


def evaluate_folders(labels_dir: Path, predictions_dir: Path, out_dir: Path | None = None,
                     cohorts_csv: Path | None = None) -> pd.DataFrame:
    """Per-case table (CSV) and overall / per-cohort summary (JSON); returns the summary table."""
    labels = {layout.parse_label_name(p.name): p for p in Path(labels_dir).glob("*.nii.gz")}
    labels.pop(None, None)
    predictions = _find_predictions(Path(predictions_dir))
    missing = sorted(set(labels) - set(predictions))
    if missing:
        raise ValueError(f"no prediction for {len(missing)} labelled case(s): {', '.join(missing)}")
    rows = []
    for case_id in sorted(labels):
        reference = sitk.ReadImage(str(labels[case_id]))
        prediction = sitk.ReadImage(str(predictions[case_id]))
        if reference.GetSize() != prediction.GetSize():
            raise ValueError(f"{case_id}: prediction grid {prediction.GetSize()} != label grid {reference.GetSize()}")
        rows.append({"case": case_id, "subject": layout.parse_stem(case_id)["subject"],
                     **case_measures(sitk.GetArrayViewFromImage(reference), sitk.GetArrayViewFromImage(prediction),
                                     float(np.prod(reference.GetSpacing())))})
    per_case = pd.DataFrame(rows)
    if cohorts_csv:
        per_case = per_case.merge(pd.read_csv(cohorts_csv)[["subject", "cohort"]], on="subject", how="left")
    groups = {"all": summarise(per_case)}
    if "cohort" in per_case:
        groups.update({str(c): summarise(g) for c, g in per_case.groupby("cohort")})
    summary = pd.DataFrame(groups).T
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        per_case.to_csv(out_dir / "per_case.csv", index=False, float_format="%.4f")
        (out_dir / "summary.json").write_text(json.dumps(
            {k: {m: (None if isinstance(v, float) and np.isnan(v) else v) for m, v in g.items()} for k, g in groups.items()},
            indent=2))
    return summary
