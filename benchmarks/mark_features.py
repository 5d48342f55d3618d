"""What tells a false mark from a microbleed (#32): per-mark image features on held-out draws.

    nice .venv/bin/python benchmarks/held_out.py --set default-validation --set varied-validation \
        --set raw-cortex-validation --model models/phantom-t1-t2-t2s --margins 2
    nice .venv/bin/python benchmarks/mark_features.py --set default-validation --set varied-validation \
        --set raw-cortex-validation --model models/phantom-t1-t2-t2s [--judge default --judge varied --judge raw-cortex]

Reads held_out.py's saved probabilities (work/held-out/SET/MODEL), re-draws each case's marks with the
tool's default rule for that set (the model's edge margin where the tool extracted the brain) and
measures each mark on the T2* scan around it:
- dark extent: the T2* voxels darker than half-way between the mark's darkest voxel and the brain's
  median around it (15 mm box), connected to that voxel inside the brain; the farthest of them from
  the mark's centre, in mm and over the mark's equivalent radius. A microbleed's dark spot ends
  where it ends; a vein's runs on along the vessel.
- blobness: the smallest over the largest eigenvalue of the T2* Hessian at the mark's centre (Gaussian
  scale 0.6 x the radius, at least 0.8 mm): near 1 for a dark ball, near 0 for a tube, below 0 elsewhere.
- elongation of the mark itself (its voxels' spread in mm, largest over smallest axis) and its radius.
Prints each feature's ROC AUC for "is a microbleed", and a logistic regression on the four
cross-validated by case (GroupKFold): how many false marks each probability cut removes and how
many microbleeds it keeps, and the reliability of its probability. With --judge: the regression
fitted on every validation mark, cut at --cut, applied once to held-out draws (held_out.py's saved
predictions of those). Writes work/held-out/marks.csv (the validation marks). A measurement for
choosing a second stage, not a model: nothing here is shipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from edge_rule import labelled_stems, redrawn_lesions
from held_out import SETS, predictions_folder, reliability
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from mixmicrobleednet import layout
from mixmicrobleednet.brain import stripped_brain
from mixmicrobleednet.lesions import CONNECTIVITY, LesionSettings, label_microbleeds
from mixmicrobleednet.modelfolder import read_model_folder

REPO = Path(__file__).resolve().parents[1]
BOX_MM = 15.0
FEATURES = ["log_extent_ratio", "blobness", "log_elongation", "log_radius_mm"]
PROBABILITY_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the regression's probability spans 0-1


def _hessian_eigenvalues(t2s: np.ndarray, voxel: np.ndarray, spacing: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Eigenvalues (ascending, per mm²) of the Gaussian-smoothed Hessian at `voxel`, computed on a crop."""
    sigma = np.maximum(sigma_mm / spacing, 0.7)  # below 0.7 voxels a Gaussian derivative is undersampled
    half = np.ceil(3 * sigma + 2).astype(int)
    lo, hi = np.maximum(voxel - half, 0), np.minimum(voxel + half + 1, t2s.shape)
    crop = t2s[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32)
    at = tuple(voxel - lo)
    hessian = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            value = ndimage.gaussian_filter(crop, sigma, order=order, mode="nearest")[at] / (spacing[i] * spacing[j])
            hessian[i, j] = hessian[j, i] = value
    return np.linalg.eigvalsh(hessian)


def _dark_extent_mm(t2s: np.ndarray, brain: np.ndarray, centre: np.ndarray, voxel: np.ndarray, darkest: float,
                    spacing: np.ndarray) -> float:
    """How far (mm) from `centre` the half-depth dark region connected to `voxel` (the mark's darkest)
    reaches, inside the brain."""
    reach = np.ceil(BOX_MM / spacing).astype(int)
    lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, t2s.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    region, in_brain = t2s[box].astype(np.float32), brain[box]
    background = float(np.median(region[in_brain] if in_brain.any() else region))
    dark = (region < (darkest + background) / 2) & in_brain
    components, _ = ndimage.label(dark, CONNECTIVITY)
    inside = voxel - lo
    if np.any(inside < 0) or np.any(inside >= components.shape):  # a mark wider than the box
        return BOX_MM
    own = components[tuple(inside)]
    if own == 0:  # the darkest voxel lies outside the brain mask
        return 0.0
    return float(np.linalg.norm((np.argwhere(components == own) - (centre - lo)) * spacing, axis=1).max())


def mark_features(t2s: np.ndarray, brain: np.ndarray, voxels: np.ndarray, spacing: np.ndarray) -> dict:
    """The features of one mark: `voxels` its (n, 3) voxel indices on the T2* grid."""
    radius = (3 * len(voxels) * np.prod(spacing) / (4 * np.pi)) ** (1 / 3)
    values = t2s[tuple(voxels.T)]
    darkest = voxels[np.argmin(values)]
    # the mark's voxel nearest its centroid: where a ball's Hessian is a ball's (a flat-bottomed
    # mark's darkest voxel may lie on its rim)
    centre = voxels[np.argmin(np.linalg.norm((voxels - voxels.mean(0)) * spacing, axis=1))]
    eigenvalues = _hessian_eigenvalues(t2s, centre, spacing, max(0.6 * radius, 0.8))
    spread = np.cov((voxels * spacing).T) if len(voxels) > 1 else np.zeros((3, 3))
    axes = np.linalg.eigvalsh(spread + np.diag(spacing ** 2 / 12))  # a voxel's own extent
    extent = _dark_extent_mm(t2s, brain, centre, darkest, float(values.min()), spacing)
    return {"radius_mm": radius, "extent_mm": extent,
            "log_extent_ratio": np.log(max(extent / radius, 0.3)),
            "blobness": eigenvalues[0] / eigenvalues[2] if eigenvalues[2] > 0 else -1.0,
            "log_elongation": 0.5 * np.log(axes[2] / axes[0]), "log_radius_mm": np.log(radius)}


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
    if not args.judge:
        return 0
    fitted = LogisticRegression().fit(marks[FEATURES], truth)
    coefficients = ", ".join(f"{f} {c:.3f}" for f, c in zip(FEATURES, fitted.coef_[0]))
    print(f"\nfitted on all {len(marks)} validation marks: {coefficients}, intercept {fitted.intercept_[0]:.3f}; "
          f"cut {args.cut}")
    for name in args.judge:
        judged = pd.DataFrame(set_marks(name, args.model, args.work))
        scans = len(labelled_stems(args.work / name / "phantoms"))
        truth = judged["microbleed"].to_numpy()
        probability = fitted.predict_proba(judged[FEATURES])[:, 1]
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
