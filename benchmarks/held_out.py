"""Models compared on held-out phantom draws (#32): sensitivity, false positives per scan, Dice, by
acquisition, by where each microbleed was drawn (lobar, superficial cortex, deep, infratentorial), by
size, and false positives by what they sit on; with the edge rule at each margin; operating points.

    nice .venv/bin/python benchmarks/held_out.py --set default --set varied --set raw-cortex \
        --model models/phantom-t1-t2-t2s --model training/compact-t1-t2-t2s/model [--margins 0 4]

Each set is a fixed draw of phantoms.generate (SETS: the seeds no training or tuning used; the
validation draws are for choosing, the others are judged once), made in work/held-out/SET/phantoms
when missing. Each model predicts it with the tool's defaults and --fast, its probabilities saved
(work/held-out/SET/MODEL, resumed: visit_pairs.predicted), and the microbleeds are re-drawn from
them at each margin (edge_rule.redrawn_lesions: where the tool extracted the brain, the raw sets,
the tool's default is the model's own margin, ModelFolder.extracted_brain_edge_margin_mm; else 0) and
the model's mimic check, where it has one, as the tool applies it (--without-mimic-check: the network's
marks alone). A microbleed of microbleeds.csv is found when the mask overlaps its label component.
Operating points (at --froc-margin): the FROC, sensitivity against false positives per scan at each of
THRESHOLDS, and the reliability of the lesion table's probability at the default threshold (the mimic
check's calibrated probability; without one, the network's maximum over the mark): the share of marks
in each probability bin that are microbleeds. Writes
work/held-out/SET/{results,froc,reliability}.csv, froc.png and reliability.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from edge_rule import labelled_stems, redrawn_lesions
from visit_pairs import predicted

from mixmicrobleednet import layout
from mixmicrobleednet.evaluate import case_measures, summarise
from mixmicrobleednet.lesions import LesionSettings, label_microbleeds
from mixmicrobleednet.modelfolder import read_model_folder
from mixmicrobleednet.phantoms import generate

REPO = Path(__file__).resolve().parents[1]
#: name: phantoms.generate keywords. Seeds used by no training (scripts/train-long.sh: 301-303, 311-313, 321-322).
SETS = {
    # the validation draws the T2*-only card chose its edge margin on
    "default-validation": {"n": 6, "seed": 3},
    "varied-validation": {"n": 9, "seed": 13, "varied": True},
    "default": {"n": 18, "seed": 2},
    "varied": {"n": 12, "seed": 12, "varied": True, "cohorts": ["highres3d", "thickslice", "lowres", "midslice"]},
    # raw heads on the quickest grid: registration and brain extraction take minutes per case
    "raw-cortex-validation": {"n": 9, "seed": 40, "raw": True, "varied": True, "superficial": True,
                              "cohorts": ["lowres"]},
    "raw-cortex": {"n": 9, "seed": 41, "raw": True, "varied": True, "superficial": True, "cohorts": ["lowres"]},
    # small microbleeds (2-4 mm) on thick slices and coarse grids, where every model misses most
    "small-validation": {"n": 8, "seed": 50, "varied": True, "small": True, "superficial": True,
                         "cohorts": ["thickslice", "lowres"]},
    "small": {"n": 12, "seed": 51, "varied": True, "small": True, "superficial": True,
              "cohorts": ["thickslice", "lowres", "midslice"]},
}
SIZES_MM = (0, 3, 5, 11)  # diameter bins: the smallest are the ones missed
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
RELIABILITY_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def found_microbleeds(reference: sitk.Image, mask: np.ndarray, microbleeds: pd.DataFrame) -> list[float]:
    """Whether (1.0, 0.0) the mask overlaps each microbleed's label component (the one nearest its
    centre); NaN where the label has none (cut away by the brain mask)."""
    components, _ = label_microbleeds(sitk.GetArrayViewFromImage(reference))
    spacing = np.array(reference.GetSpacing()[::-1])
    found = []
    for row in microbleeds.itertuples():
        centre = np.array(reference.TransformPhysicalPointToContinuousIndex((row.x_lps, row.y_lps, row.z_lps)))[::-1]
        reach = np.ceil(row.diameter_mm / 2 / spacing).astype(int) + 1
        lo = np.maximum(np.round(centre).astype(int) - reach, 0)
        box = tuple(slice(a, b) for a, b in zip(lo, np.round(centre).astype(int) + reach + 1))
        ids = components[box]
        if not ids.any():  # outside the brain mask: no label to find (the label is cut there)
            found.append(np.nan)
            continue
        near = np.argwhere(ids)
        nearest = ids[tuple(near[np.argmin((((near + lo) - centre) * spacing) ** 2 @ np.ones(3))])]
        found.append(float(mask[components == nearest].any()))
    return found


def predictions_folder(work: Path, name: str, model: Path) -> Path:
    """Where a model's predictions of set `name` are saved: named after the model's folder (a
    training's model/ after its training)."""
    return work / name / (model.name if model.name != "model" else model.parent.name)


def score_set(name: str, models: list[Path], margins: list[float], froc_margin: float, work: Path,
              mimic_check: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    phantoms = work / name / "phantoms"
    if not (phantoms / "phantoms.csv").is_file():
        generate(phantoms, **SETS[name])
    cohorts = pd.read_csv(phantoms / "phantoms.csv").set_index("subject")["cohort"]
    microbleeds = pd.read_csv(phantoms / "microbleeds.csv")
    microbleeds["subject"] = microbleeds["subject"].astype(str)
    stems = labelled_stems(phantoms)
    rules = [LesionSettings(edge_margin_mm=m) for m in margins] + \
            [LesionSettings(threshold=t, edge_margin_mm=froc_margin) for t in THRESHOLDS]
    rows, bleed_rows, froc_rows, marks = [], [], [], []
    for model in models:
        output = predictions_folder(work, name, model)
        predicted(phantoms, output, model)
        check = read_model_folder(model).mimic_check if mimic_check else None
        label = output.name + ("" if mimic_check else " (no mimic check)")
        for stem in stems:
            subject = layout.parse_stem(stem)["subject"]
            reference, mimics, _, redrawn = redrawn_lesions(phantoms, output, stem, rules, check)
            truth = sitk.GetArrayViewFromImage(reference)
            voxel_volume = float(np.prod(reference.GetSpacing()))
            ours = microbleeds[microbleeds["subject"] == subject]
            common = {"set": name, "model": label, "subject": subject, "cohort": cohorts[subject]}
            for margin, lesions in zip(margins, redrawn):
                rows.append({**common, "margin_mm": margin, **case_measures(truth, lesions.mask, voxel_volume, mimics)})
                bleed_rows += [{**common, "margin_mm": margin, "drawn_from": row.drawn_from,
                                "diameter_mm": row.diameter_mm, "found": hit}
                               for row, hit in zip(ours.itertuples(), found_microbleeds(reference, lesions.mask, ours))]
            for threshold, lesions in zip(THRESHOLDS, redrawn[len(margins):]):
                froc_rows.append({**common, "threshold": threshold,
                                  **case_measures(truth, lesions.mask, voxel_volume, mimics)})
                if threshold == LesionSettings.threshold:  # the marks a user sees, in the table's order
                    components, count = label_microbleeds(lesions.mask)
                    column = "calibrated_probability" if check else "max_probability"
                    for component, probability in zip(range(1, count + 1), lesions.table[column], strict=True):
                        marks.append({**common, "probability": probability,
                                      "microbleed": bool(truth[components == component].any())})
    per_case, per_bleed = pd.DataFrame(rows), pd.DataFrame(bleed_rows)
    per_case.to_csv(work / name / "per_case.csv", index=False)
    per_bleed.to_csv(work / name / "per_microbleed.csv", index=False)
    return tables(per_case, per_bleed), operating_points(pd.DataFrame(froc_rows)), reliability(pd.DataFrame(marks))


def operating_points(froc: pd.DataFrame) -> pd.DataFrame:
    """Sensitivity and false positives per scan at each threshold, all cases and per acquisition."""
    points = {(model, "all", t): summarise(g) for (model, t), g in froc.groupby(["model", "threshold"])}
    points.update({key: summarise(g) for key, g in froc.groupby(["model", "cohort", "threshold"])})
    table = pd.DataFrame(points).T.sort_index()
    table.index = table.index.set_names(["model", "cohort", "threshold"])
    return table[["sensitivity", "false_positives_per_scan", "dice_cases_with_microbleeds"]].astype(float)


def reliability(marks: pd.DataFrame, bins: tuple[float, ...] = RELIABILITY_BINS) -> pd.DataFrame:
    """Per model and probability bin: marks, the share that are microbleeds, the mean probability;
    and the expected calibration error (the marks' weighted mean gap) per model."""
    marks = marks.assign(bin=pd.cut(marks["probability"], bins, include_lowest=True))
    table = marks.groupby(["model", "bin"], observed=True).agg(
        marks=("microbleed", "size"), microbleeds=("microbleed", "mean"), mean_probability=("probability", "mean"))
    gap = (table["microbleeds"] - table["mean_probability"]).abs() * table["marks"]
    table["calibration_error"] = gap.groupby("model").transform("sum") / table["marks"].groupby("model").transform("sum")
    return table


def plots(name: str, froc: pd.DataFrame, calibration: pd.DataFrame, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohorts = list(dict.fromkeys(froc.index.get_level_values("cohort")))
    most = max(1.0, float(froc["false_positives_per_scan"].max()))  # one scale for every panel
    figure, axes = plt.subplots(1, len(cohorts), figsize=(3.2 * len(cohorts), 3.2), sharey=True, squeeze=False)
    for ax, cohort in zip(axes[0], cohorts):
        for model, curve in froc.xs(cohort, level="cohort").groupby(level="model"):
            curve = curve.droplevel("model")
            line, = ax.plot(curve["false_positives_per_scan"], curve["sensitivity"], marker=".", label=model)
            ax.plot(*curve.loc[LesionSettings.threshold, ["false_positives_per_scan", "sensitivity"]], "o",
                    color=line.get_color(), markerfacecolor="none", markersize=9)
        ax.set(title=cohort, xlabel="false positives per scan", ylim=(0, 1.02), xlim=(-0.05 * most, 1.05 * most))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("sensitivity")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.suptitle(f"FROC, held-out set {name} (thresholds {THRESHOLDS[0]}-{THRESHOLDS[-1]}; circle: "
                    f"{LesionSettings.threshold})", fontsize=9)
    figure.tight_layout()
    figure.savefig(folder / "froc.png", dpi=110)
    figure, ax = plt.subplots(figsize=(3.6, 3.6))
    for model, bins in calibration.groupby(level="model"):
        line, = ax.plot(bins["mean_probability"], bins["microbleeds"], marker="o",
                        label=f"{model} (error {bins['calibration_error'].iloc[0]:.2f})")
        for x, y, n in zip(bins["mean_probability"], bins["microbleeds"], bins["marks"]):  # how many marks
            ax.annotate(str(int(n)), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=line.get_color())
    ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle=":")
    ax.set(xlabel="mark's probability", ylabel="share that are microbleeds", xlim=(0.5, 1), ylim=(0, 1.02),
           title=f"reliability, held-out set {name}")
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "reliability.png", dpi=110)


def tables(per_case: pd.DataFrame, per_bleed: pd.DataFrame) -> pd.DataFrame:
    keys = ["set", "model", "margin_mm"]
    summary = {(*key, "all"): summarise(group) for key, group in per_case.groupby(keys)}
    summary.update({key: summarise(group) for key, group in per_case.groupby([*keys, "cohort"])})
    table = pd.DataFrame(summary).T.sort_index()
    table.index = table.index.set_names([*keys, "cohort"])
    per_bleed = per_bleed.assign(size=pd.cut(per_bleed["diameter_mm"], SIZES_MM, right=False,
                                             labels=[f"{a}-{b} mm" for a, b in zip(SIZES_MM, SIZES_MM[1:])]))
    for column in ("drawn_from", "size"):
        found = per_bleed.dropna(subset=["found"]).groupby([*keys, column], observed=True)["found"]
        print(f"\nsensitivity by {column} (found / microbleeds)")
        print(pd.DataFrame({"found": found.sum().astype(int), "microbleeds": found.size(),
                            "sensitivity": found.mean().round(3)}).unstack(column).to_string())
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", choices=list(SETS), required=True)
    parser.add_argument("--model", action="append", type=Path, required=True, help="a model folder (repeat)")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 2.0, 4.0], help="edge margins, mm")
    parser.add_argument("--froc-margin", type=float, default=0.0, help="the edge margin of the operating points")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "held-out")
    parser.add_argument("--without-mimic-check", action="store_true", help="the network's marks alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pd.set_option("display.width", 250)
    columns = ["cases", "reference_microbleeds", "sensitivity", "false_positives_per_scan", "dice_cases_with_microbleeds"]
    for name in args.set:
        table, froc, calibration = score_set(name, args.model, args.margins, args.froc_margin, args.work,
                                             not args.without_mimic_check)
        mimic_columns = [c for c in table.columns if c.startswith("false_positives_") and c.endswith("_per_scan")
                         and c != "false_positives_per_scan"]
        print(f"\n{name}: {SETS[name]}")
        print(table[columns + mimic_columns].astype(float).round(3).to_string())
        table.to_csv(args.work / name / "results.csv")
        print(f"\noperating points (edge margin {args.froc_margin:g} mm)")
        print(froc.xs("all", level="cohort").round(3).unstack("model").to_string())
        print("\nreliability of the marks' probability")
        print(calibration.round(3).to_string())
        froc.to_csv(args.work / name / "froc.csv")
        calibration.to_csv(args.work / name / "reliability.csv")
        plots(name, froc, calibration, args.work / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
