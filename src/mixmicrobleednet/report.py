"""What a person reads: results.json (the seed's), summary.csv, the lesion table and the QC pictures
(microbleeds; preprocessing: registration and brain mask).

Every file is written under a temporary name and renamed (files.atomic_output).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from . import layout, regions
from .files import atomic_output
from .imaging import image_like
from .lesions import LesionSettings, Lesions

#: The QC picture shows at most this many microbleeds (the largest); the caption says how many more.
QC_MAX_PANELS = 12
QC_FIELD_OF_VIEW_MM = 50.0
QC_COLUMNS = 4
# The seed's columns first; later ones only ever added at the end.
SUMMARY_COLUMNS = ["subject", "status", "message", "microbleed_count", "total_volume_mm3", "runtime_s", "session",
                   "case", "model", "model_sha256", *regions.SUMMARY_COLUMNS, "edge_margin_mm", "near_edge_count"]


def write_results_json(entries: list[dict], output_dir: Path) -> None:
    with atomic_output(output_dir / layout.RESULTS_JSON) as temporary:
        temporary.write_text(json.dumps(entries, indent=2))


def write_summary_csv(rows: list[dict], output_dir: Path) -> None:
    """One row per case: subject, ok/error and its message, count, total volume, runtime."""
    with atomic_output(output_dir / layout.SUMMARY_CSV) as temporary:
        pd.DataFrame(rows, columns=SUMMARY_COLUMNS).to_csv(temporary, index=False, float_format="%.3f")


def write_cohort_tsv(rows: list[dict], output_dir: Path) -> None:
    """The BIDS group level's table: one row per subject and session, BIDS's n/a for no value."""
    columns = ["participant_id", "session_id", "case", "status", "microbleed_count", "total_volume_mm3", "message",
               "runtime_s", "model", "model_sha256", *regions.CATEGORY_COLUMNS, "edge_margin_mm", "near_edge_count"]
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    table.insert(0, "participant_id", "sub-" + table["subject"].astype(str))
    table.insert(1, "session_id", table["session"].map(lambda s: f"ses-{s}" if isinstance(s, str) and s else None))
    with atomic_output(output_dir / layout.BIDS_COHORT_TSV) as temporary:
        table[columns].to_csv(temporary, sep="\t", index=False, na_rep="n/a", float_format="%.3f")


def write_lesion_table(lesions: Lesions, path: Path) -> None:
    """One row per microbleed; a table with only its header when there are none (tab-separated
    when the name ends in .tsv, as BIDS asks)."""
    with atomic_output(path) as temporary:
        lesions.table.to_csv(temporary, sep="\t" if path.suffix == ".tsv" else ",", index=False, float_format="%.3f")


def _display_lps(image: sitk.Image) -> sitk.Image:
    # Radiological view of axial slices: patient left on the right, anterior at the top.
    return sitk.DICOMOrient(image, "LPS")


def _window(t2s: np.ndarray) -> tuple[float, float]:
    brain = t2s[t2s > 0]
    if brain.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(brain, (1, 99.5))
    return float(low), float(max(high, low + 1e-6))


def write_qc_picture(path: Path, case_id: str, t2s: sitk.Image, lesions: Lesions, settings: LesionSettings) -> None:
    """T2* slices through each detected microbleed with its outline and a one-line caption; a
    lightbox of the T2* saying "no microbleeds detected" when there are none."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers and CI
    import matplotlib.pyplot as plt

    display = _display_lps(t2s)
    image = sitk.GetArrayFromImage(display)
    mask = sitk.GetArrayFromImage(_display_lps(image_like(lesions.mask, t2s)))
    spacing_x, spacing_y, _ = display.GetSpacing()
    vmin, vmax = _window(image)
    caption = (f"{case_id}: {lesions.count} microbleed{'s' if lesions.count != 1 else ''}, "
               f"total {lesions.total_volume_mm3:.1f} mm³  ({settings.describe()})")
    if lesions.count and "region_category" in lesions.table and lesions.table["region_category"].notna().all():
        counted = regions.counts(lesions.table)["categories"]  # as the record and the summary count them
        caption += "\n" + ", ".join(f"{n} {c}" for c, n in counted.items()) + \
            "  (MARS categories from an atlas: a research measure)"

    if lesions.count:
        shown = lesions.table.nlargest(QC_MAX_PANELS, "volume_mm3").sort_values("lesion_id")
        if len(shown) < lesions.count:
            caption += f"; showing the {len(shown)} largest"
        panels = []
        half_x = int(QC_FIELD_OF_VIEW_MM / 2 / spacing_x)
        half_y = int(QC_FIELD_OF_VIEW_MM / 2 / spacing_y)
        for row in shown.itertuples():
            lps = (-row.centroid_x_ras_mm, -row.centroid_y_ras_mm, row.centroid_z_ras_mm)
            i, j, k = (int(round(c)) for c in display.TransformPhysicalPointToContinuousIndex(lps))
            k = min(max(k, 0), image.shape[0] - 1)
            crop = (k, slice(max(j - half_y, 0), j + half_y + 1), slice(max(i - half_x, 0), i + half_x + 1))
            title = (f"#{row.lesion_id}  {row.volume_mm3:.1f} mm³  Ø{row.equivalent_diameter_mm:.1f} mm  "
                     f"z={row.centroid_z_ras_mm:.0f} mm")
            if isinstance(getattr(row, "region", None), str):  # the table's words (regions.locate_lesions)
                title += f"\n{row.region} ({row.region_category}), {row.hemisphere}"
            panels.append((image[crop], mask[crop], title))
    else:
        caption = f"{case_id}: no microbleeds detected  ({settings.describe()})"
        occupied = np.flatnonzero(image.reshape(image.shape[0], -1).max(1) > 0)
        first, last = (occupied[0], occupied[-1]) if occupied.size else (0, image.shape[0] - 1)
        slices = np.unique(np.linspace(first, last, min(QC_MAX_PANELS, last - first + 1)).round().astype(int))
        panels = [(image[k], None, f"z={display.TransformIndexToPhysicalPoint((0, 0, int(k)))[2]:.0f} mm")
                  for k in slices]

    n_columns = min(QC_COLUMNS, len(panels))
    n_rows = math.ceil(len(panels) / n_columns)
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(3 * n_columns, 3 * n_rows + 0.5), squeeze=False,
                                facecolor="black")
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, (picture, outline, title) in zip(axes.flat, panels):
        axis.imshow(picture, cmap="gray", vmin=vmin, vmax=vmax, aspect=spacing_y / spacing_x, interpolation="nearest")
        if outline is not None and outline.any():
            axis.contour(outline, levels=[0.5], colors="#ff3030", linewidths=1.2)
        axis.set_title(title, color="white", fontsize=9)
    figure.suptitle(caption, color="white", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, facecolor="black", format="png")
    plt.close(figure)


def write_preprocessing_qc(path: Path, case_id: str, t2s: sitk.Image, registered: dict[str, np.ndarray],
                           captions: dict[str, str], brain: np.ndarray | None, brain_caption: str) -> None:
    """Four axial T2* slices per registered channel (its array on the T2* grid) with the channel's
    edges (yellow), or one row of them without any, and the brain mask's outline (cyan; `brain`
    None: the skull-stripped T2* scan's own): edges that follow the T2* anatomy and an outline that
    follows the brain show at a glance that registration and brain extraction went right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    display = _display_lps(t2s)
    image = sitk.GetArrayFromImage(display)
    spacing_x, spacing_y, _ = display.GetSpacing()
    vmin, vmax = _window(image)
    occupied = np.flatnonzero(image.reshape(image.shape[0], -1).max(1) > 0)
    first, last = (occupied[0], occupied[-1]) if occupied.size else (0, image.shape[0] - 1)
    slices = np.unique(np.linspace(first, last, 6)[1:-1].round().astype(int))
    outline = (sitk.GetArrayFromImage(_display_lps(image_like(brain.astype(np.uint8), t2s))) > 0 if brain is not None
               else ndimage.binary_fill_holes(image > 0))
    rows = list(registered) or [None]
    figure, axes = plt.subplots(len(rows), len(slices), figsize=(3 * len(slices), 3 * len(rows) + 0.8),
                                squeeze=False, facecolor="black")
    for row, channel in enumerate(rows):
        edges = level = None
        if channel is not None:
            channel_display = sitk.GetArrayFromImage(_display_lps(image_like(registered[channel], t2s)))
            edges = ndimage.gaussian_gradient_magnitude(channel_display, sigma=1.0)
            level = np.percentile(edges[channel_display > 0], 90) if (channel_display > 0).any() else 1.0
        for axis, k in zip(axes[row], slices):
            axis.set_axis_off()
            axis.imshow(image[k], cmap="gray", vmin=vmin, vmax=vmax, aspect=spacing_y / spacing_x,
                        interpolation="nearest")
            if edges is not None:
                axis.contour(edges[k], levels=[level], colors="#ffd400", linewidths=0.6)
            if outline[k].any():
                axis.contour(outline[k], levels=[0.5], colors="#00d0ff", linewidths=0.8)
            axis.set_title(f"{channel or 'T2*'}  z={display.TransformIndexToPhysicalPoint((0, 0, int(k)))[2]:.0f} mm",
                           color="white", fontsize=9)
    lines = [f"{case_id}: preprocessing onto T2*"
             + (f" (yellow: {', '.join(registered)} edges after registration)" if registered else "")
             + "; cyan: brain mask outline", f"brain mask: {textwrap.shorten(brain_caption, 150)}"]
    lines += [f"{channel}: {textwrap.shorten(captions.get(channel, ''), 150)}" for channel in registered]
    figure.suptitle("\n".join(lines), color="white", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.2 * len(lines) / figure.get_figheight()))
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, facecolor="black", format="png")
    plt.close(figure)
