"""Measures of predicted microbleeds against reference labels, by one of two rules.

`overlap` (the default: what our model cards report) — per case:
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
false positives per scan = all FP / cases); Dice is the mean over cases with microbleeds. Where a
phantom's mimic map lies beside its label (layout.mimic_map_name), each false positive is also
counted by the mimic it sits on (most of its voxels; `other` when none): false_positives_vein, ….

`valdo` — the VALDO 2021 challenge's own Task 2 rule (valdo_case_measures), as its public
evaluation code computes it, aggregated as the challenge did (median and interquartile range).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from . import layout
from .lesions import label_microbleeds

log = logging.getLogger(__name__)


def _false_positives_by_mimic(pred_labels: np.ndarray, false_components: list[int], mimics: np.ndarray) -> dict:
    counts = {f"false_positives_{name}": 0 for name in [*layout.MIMIC_LABELS.values(), "other"]}
    for component in false_components:
        under = mimics[pred_labels == component]
        values, voxels = np.unique(under[under > 0], return_counts=True)
        name = layout.MIMIC_LABELS[int(values[np.argmax(voxels)])] if len(values) else "other"
        counts[f"false_positives_{name}"] += 1
    return counts


def case_measures(reference: np.ndarray, prediction: np.ndarray, voxel_volume_mm3: float,
                  mimics: np.ndarray | None = None) -> dict:
    reference, prediction = reference > 0, prediction > 0
    ref_labels, n_ref = label_microbleeds(reference)
    pred_labels, n_pred = label_microbleeds(prediction)
    detected = len(np.unique(ref_labels[prediction & reference]))
    true_predicted = len(np.unique(pred_labels[prediction & reference]))
    overlap = int((reference & prediction).sum())
    n_ref_vox, n_pred_vox = int(reference.sum()), int(prediction.sum())
    precision = true_predicted / n_pred if n_pred else np.nan
    recall = detected / n_ref if n_ref else np.nan
    by_mimic = {} if mimics is None else _false_positives_by_mimic(
        pred_labels, sorted(set(range(1, n_pred + 1)) - set(np.unique(pred_labels[prediction & reference]))), mimics)
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
        **by_mimic,
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
        **{f"{column}_per_scan": float(per_case[column].sum() / len(per_case))
           for column in per_case.columns if column.startswith("false_positives_") and len(per_case)},
    }


#: The four Task 2 measures the challenge ranked microbleeds by.
VALDO_MEASURES = ("absolute_count_difference", "f1", "mean_dice", "absolute_volume_difference_mm3")
VALDO_THRESHOLD = 0.5


def valdo_case_measures(reference: np.ndarray, prediction: np.ndarray, spacing_zyx, distance: float,
                        distance_unit: str = "voxel", threshold: float = VALDO_THRESHOLD) -> dict:
    """The VALDO 2021 Task 2 microbleed measures of one case, by the rules of the challenge's public
    evaluation code (WhereIsValdo/valdo-eval-2021: evaluation_comparison/pairwise_measures.py with
    `compare_segmentations.py -task microbleeds`, as revised in 2022, commit af152b5), in our own
    words and code:

    - The prediction may be probabilities: voxels >= `threshold` (0.5) are microbleed voxels, and
      the volume counts the probabilities of those voxels ("clipped" map), not their number.
    - The label is rounded to one decimal, so it keeps the raters' agreement: 1 (both raters) or
      0.5 (one of two). Reference microbleeds are the 26-connected components of its voxels above
      0, whatever their agreement; a microbleed's agreement is its largest label value.
    - Predicted microbleeds are 26-connected components. Each is assigned to the reference
      microbleed whose centre of mass (of its voxels, unweighted) is nearest, if closer than
      `distance`; none → false positive. A reference microbleed with one assigned prediction: that
      one is a true positive; with several, the nearest is (all of them on an exact tie, as the
      code's equality test does) and the others are false positives. Misses: reference microbleeds
      with no prediction assigned.
    - Centres of mass are in voxel indices with `distance_unit="voxel"` (the 2021 release measured
      so); `"mm"` multiplies them by the spacing first, as the 2022 revision does with `pixdim`.
    - F1 weighs each true positive and each miss by its microbleed's agreement, false positives by 1:
      2 wTP / (2 wTP + FP + wFN). Mean Dice: over reference microbleeds with a true positive, the
      Dice of the union of every prediction assigned to it (false positives among them too) with the
      microbleed's label values as voxel weights, averaged. Absolute count difference: |reference -
      predicted components|. Absolute volume difference: |sum of the clipped map - sum of the
      label| x voxel volume. With labels of 0 and 1 all of these are the unweighted measures.
    - As in the public code, a true positive's weight can be another row's: the code reads its table
      of predictions by position but files each weight (agreement for a true positive, 1 otherwise)
      by row number, and the table is reordered (predictions alone on their microbleed first, then
      those sharing one, several false positives among them) when not all are alike. So F1 depends
      on the order in which the NIfTI (x, y, z) array numbers the components; with labels of 0 and
      1 every weight is 1 and nothing moves.
    - An empty prediction (nothing >= threshold): F1 and mean Dice 0, or NaN when the reference is
      empty too; an empty reference: F1 and mean Dice NaN (every prediction a false positive).
    - The public code's input checks (`np.all(seg) >= 0` and the like) compare a boolean with 0 or
      1 and so can never fail; here a prediction outside [0, 1] or a grid mismatch is an error.
    """
    if distance_unit not in ("voxel", "mm"):
        raise ValueError(f"distance unit {distance_unit!r}: use voxel or mm")
    prediction = np.asarray(prediction, np.float64)
    if prediction.size and (prediction.min() < 0 or prediction.max() > 1):
        raise ValueError(f"prediction values in [{prediction.min()}, {prediction.max()}]: expected 0..1")
    # On NIfTI's (x, y, z) array, so that microbleeds are numbered as the challenge code numbers them:
    # the numbering breaks its equal-distance ties and places its F1 weights (below).
    prediction, spacing = prediction.T, np.asarray(spacing_zyx, np.float64)[::-1]
    reference = np.around(np.asarray(reference, np.float64), 1).T
    binary = prediction >= threshold
    clipped_sum = float(prediction[binary].sum())
    ref_labels, n_ref = label_microbleeds(reference)
    seg_labels, n_seg = label_microbleeds(binary)
    result = {"n_reference": n_ref, "n_predicted": n_seg,
              "absolute_count_difference": abs(n_ref - n_seg),
              "absolute_volume_difference_mm3": abs(clipped_sum - float(reference.sum())) * float(np.prod(spacing))}
    if clipped_sum == 0 or n_ref == 0:  # nothing predicted, or nothing to find
        undefined = np.nan if n_ref == 0 else 0.0
        return {**result, "true_positives": 0, "false_positives": n_seg, "false_negatives": n_ref,
                "f1": undefined, "mean_dice": undefined}
    scale = spacing if distance_unit == "mm" else 1.0
    seg_centres = np.array(ndimage.center_of_mass(binary, seg_labels, range(1, n_seg + 1))) * scale
    ref_centres = np.array(ndimage.center_of_mass(reference > 0, ref_labels, range(1, n_ref + 1))) * scale
    agreement = np.asarray(ndimage.maximum(reference, ref_labels, np.arange(1, n_ref + 1)))
    distances = cdist(seg_centres, ref_centres)
    nearest = distances.argmin(axis=1)
    nearest_distance = distances[np.arange(n_seg), nearest]
    assigned = np.where(nearest_distance < distance, nearest + 1, 0)  # reference label, 0: none
    found = np.unique(assigned[assigned > 0])
    true_positive = np.zeros(n_seg, bool)
    dice = []
    for ref_label in found:
        mine = np.flatnonzero(assigned == ref_label)
        true_positive[mine[nearest_distance[mine] == nearest_distance[mine].min()]] = True
        predicted = np.isin(seg_labels, mine + 1)
        weights = np.where(ref_labels == ref_label, reference, 0.0)
        dice.append(2 * weights[predicted].sum() / (predicted.sum() + weights.sum()))
    tp = int(true_positive.sum())
    fp, fn = n_seg - tp, n_ref - len(found)
    # Each row's weight goes to the row numbered as its place in the code's reordered table (docstring).
    shared = np.bincount(assigned)[assigned] > 1
    row_weight = np.where(true_positive, agreement[assigned - 1], 1.0)
    weighted_tp = row_weight[np.concatenate([np.flatnonzero(~shared), np.flatnonzero(shared)])][true_positive].sum()
    weighted_fn = agreement.sum() - agreement[found - 1].sum()
    return {**result, "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "f1": float(2 * weighted_tp / (2 * weighted_tp + fp + weighted_fn)),
            "mean_dice": float(np.mean(dice)) if dice else 0.0}


def valdo_summary(per_case: pd.DataFrame) -> dict:
    """The challenge's aggregation: median and interquartile range of each measure over cases
    (cases where a measure is undefined are left out of it)."""
    summary = {"cases": len(per_case)}
    for measure in VALDO_MEASURES:
        values = per_case[measure].astype(float)
        summary.update({f"{measure}_median": float(values.median()), f"{measure}_q1": float(values.quantile(0.25)),
                        f"{measure}_q3": float(values.quantile(0.75))})
    return summary


def _find_predictions(folder: Path, kind: str) -> dict[str, Path]:
    """Case stem -> file of the given output kind (mask or probability) in an output folder (or its
    images/ subfolder)."""
    for candidate in (folder / layout.IMAGES_DIR, folder):
        found = {layout.parse_output_name(p.name, kind): p for p in candidate.glob("*.nii.gz")}
        found.pop(None, None)
        if found:
            return found
    return {}


def evaluate_folders(labels_dir: Path, predictions_dir: Path, out_dir: Path | None = None,
                     cohorts_csv: Path | None = None, matching: str = "overlap", distance: float | None = None,
                     distance_unit: str = "voxel", probabilities: bool = False) -> pd.DataFrame:
    """Per-case table (CSV) and overall / per-cohort summary (JSON); returns the summary table.
    `matching`: overlap (ours) or valdo (the challenge's, with `distance` in `distance_unit`);
    `probabilities`: score the probability maps (--save-probabilities) instead of the masks."""
    if matching == "valdo" and distance is None:
        raise ValueError("the valdo rule needs a matching distance (--distance-voxels or --distance-mm)")
    labels = {layout.parse_label_name(p.name): p for p in Path(labels_dir).glob("*.nii.gz")}
    labels.pop(None, None)
    predictions = _find_predictions(Path(predictions_dir), "probability" if probabilities else "mask")
    missing = sorted(set(labels) - set(predictions))
    if missing:
        raise ValueError(f"no prediction for {len(missing)} labelled case(s): {', '.join(missing)}")
    rule = "overlap" if matching == "overlap" else \
        f"valdo (centres closer than {distance:g} {'voxels' if distance_unit == 'voxel' else 'mm'})"
    rows = []
    for case_id in sorted(labels):
        reference = sitk.ReadImage(str(labels[case_id]))
        prediction = sitk.ReadImage(str(predictions[case_id]))
        if reference.GetSize() != prediction.GetSize():
            raise ValueError(f"{case_id}: prediction grid {prediction.GetSize()} != label grid {reference.GetSize()}")
        reference_array, prediction_array = sitk.GetArrayViewFromImage(reference), sitk.GetArrayViewFromImage(prediction)
        if matching == "valdo":
            measures = valdo_case_measures(reference_array, prediction_array, reference.GetSpacing()[::-1],
                                           distance, distance_unit)
        else:
            mimic_map = Path(labels_dir) / layout.mimic_map_name(case_id)
            measures = case_measures(reference_array, prediction_array, float(np.prod(reference.GetSpacing())),
                                     sitk.GetArrayFromImage(sitk.ReadImage(str(mimic_map)))
                                     if mimic_map.is_file() else None)
        rows.append({"case": case_id, "subject": layout.parse_stem(case_id)["subject"], "matching": rule, **measures})
    per_case = pd.DataFrame(rows)
    if cohorts_csv:
        per_case = per_case.merge(pd.read_csv(cohorts_csv)[["subject", "cohort"]], on="subject", how="left")
    summarise_group = valdo_summary if matching == "valdo" else summarise
    groups = {"all": summarise_group(per_case)}
    if "cohort" in per_case:
        groups.update({str(c): summarise_group(g) for c, g in per_case.groupby("cohort")})
    summary = pd.DataFrame(groups).T
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        per_case.to_csv(out_dir / "per_case.csv", index=False, float_format="%.4f")
        (out_dir / "summary.json").write_text(json.dumps(
            {k: {m: (None if isinstance(v, float) and np.isnan(v) else v) for m, v in g.items()} for k, g in groups.items()},
            indent=2))
    return summary


def surface_points(brain: sitk.Image) -> np.ndarray:
    """World coordinates (LPS, mm) of the brain mask's boundary voxels."""
    mask = sitk.GetArrayFromImage(brain) > 0
    boundary = mask & ~ndimage.binary_erosion(mask)
    indices = np.argwhere(boundary)[:, ::-1].astype(float)  # (x, y, z) index order
    return np.array([brain.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in indices[::20]])


def surface_error(truth: sitk.Transform, found: sitk.Transform, points: np.ndarray) -> tuple[float, float]:
    """Distances between where the two fixed→moving transforms put the fixed image's points of the
    brain surface (the surface as it lies in the fixed image: truth's inverse of ch2's surface)."""
    inverse = truth.GetInverse()
    distances = []
    for point in points:
        in_fixed = inverse.TransformPoint(tuple(point))
        distances.append(np.linalg.norm(np.subtract(found.TransformPoint(in_fixed), point)))
    return float(np.mean(distances)), float(np.max(distances))
