"""What a person reads: a case's outputs (mask, lesion table, probability map, brain mask, sidecars,
QC pictures of the microbleeds and of preprocessing), results.json (the seed's) and summary.csv.

Every file is written under a temporary name and renamed (files.atomic_output).
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from . import layout, regions
from .brain import stripped_brain
from .cases import Case, CaseError
from .files import atomic_output, remove_partials, write_image_atomic, write_json_value
from .imaging import ChannelStack, image_like
from .lesions import LesionSettings, Lesions

#: The QC picture shows at most this many microbleeds (the largest); the caption says how many more.
QC_MAX_PANELS = 12
QC_FIELD_OF_VIEW_MM = 50.0
QC_COLUMNS = 4


@dataclass(frozen=True, kw_only=True)
class OutputSettings:
    """What is written per case besides the mask and the lesion table."""

    lesions: LesionSettings = LesionSettings()
    save_probabilities: bool = False
    qc_picture: bool = True
    regions: bool = True  # each microbleed's MARS region (regions.py); off with --no-regions
    deidentify: bool = False  # DICOM outputs name the patient by the subject label (pacs.py)


def write_results_json(entries: list[dict], output_dir: Path) -> None:
    with atomic_output(output_dir / layout.RESULTS_JSON) as temporary:
        temporary.write_text(json.dumps(entries, indent=2))


def write_summary_csv(rows: list[dict], columns: list[str], output_dir: Path) -> None:
    """One row per case (records.summary_row): subject, ok/error and its message, count, total volume, runtime..."""
    with atomic_output(output_dir / layout.SUMMARY_CSV) as temporary:
        pd.DataFrame(rows, columns=columns).to_csv(temporary, index=False, float_format="%.3f")


def write_cohort_tsv(rows: list[dict], columns: list[str], output_dir: Path) -> None:
    """The BIDS group level's table (records.cohort_row): one row per subject and session, BIDS's n/a
    for no value."""
    with atomic_output(output_dir / layout.BIDS_COHORT_TSV) as temporary:
        pd.DataFrame(rows, columns=columns).to_csv(temporary, sep="\t", index=False, na_rep="n/a", float_format="%.3f")


def write_case_outputs(case: Case, stack: ChannelStack, probabilities: np.ndarray, lesions: Lesions,
                       output_dir: Path, settings: OutputSettings, sidecars: dict[str, dict] | None = None
                       ) -> dict[str, str]:
    """Write what the case's layout asks for (its output_paths; `sidecars`: kind -> content of the
    JSON sidecars where the layout has them); return kind -> path written."""
    paths = {kind: output_dir / relative for kind, relative in case.output_paths.items() if kind != "record"}
    for path in paths.values():
        remove_partials(path)  # left by a run that was killed while writing this case
    writers = {"mask": lambda path: write_image_atomic(image_like(lesions.mask, stack.reference), path),
               "lesions": lambda path: write_lesion_table(lesions, path),
               "count": lambda path: write_json_value(lesions.count, path),
               "total_volume": lambda path: write_json_value(round(lesions.total_volume_mm3, 3), path),
               "mask_sidecar": lambda path: write_json_value(sidecars["mask_sidecar"], path)}
    if settings.save_probabilities:
        writers["probability"] = lambda path: write_image_atomic(image_like(probabilities, stack.reference), path)
        writers["probability_sidecar"] = lambda path: write_json_value(sidecars["probability_sidecar"], path)
    if settings.qc_picture:
        writers["qc"] = lambda path: write_qc_picture(path, case.case_id, stack.reference, lesions, settings.lesions)
    if stack.brain.mask is not None:
        writers["brain_mask"] = lambda path: write_image_atomic(image_like(stack.brain.mask.astype(np.uint8),
                                                                           stack.reference), path)
        writers["brain_mask_sidecar"] = lambda path: write_json_value(
            {**sidecars["brain_mask_sidecar"], "Description": f"Brain mask: {stack.brain.source}"}, path)
    if settings.qc_picture and (stack.registrations or stack.brain.mask is not None):
        channels = list(stack.alignment)  # in the stack's channel order
        writers["preprocessing_qc"] = lambda path: write_preprocessing_qc(
            path, case.case_id, stack.reference, {c: stack.array[channels.index(c)] for c in stack.registrations},
            {c: r.summary() for c, r in stack.registrations.items()}, stack.brain.mask,
            f"{stack.brain.source}, {stack.brain.volume_ml:.0f} ml")
    written = {}
    for kind, write in writers.items():
        if kind in paths:
            write(paths[kind])
            written[kind] = case.output_paths[kind]
    if case.dicom_headers:
        written |= _write_dicom_outputs(case, paths, image_like(lesions.mask, stack.reference), lesions,
                                        paths["qc"] if "qc" in written else None, settings)
    return written


def _write_dicom_outputs(case: Case, paths: dict[str, Path], mask: sitk.Image, lesions: Lesions, qc: Path | None,
                         settings: OutputSettings) -> dict[str, str]:
    """SEG, SR and the QC picture for PACS, on the source series the T2* scan was converted from; a
    failure is the case's error (its NIfTI outputs stand)."""
    from .dicom import read_headers
    from .pacs import PacsError, write_dicom_outputs

    wanted = {kind: path for kind, path in paths.items() if kind.startswith("dicom_")}
    try:
        made = write_dicom_outputs(wanted, mask, lesions.with_world(), qc, read_headers(case.dicom_headers),
                                   deidentify_as=f"sub-{case.subject}" if settings.deidentify else None)
    except (PacsError, OSError, ValueError) as exc:
        raise CaseError(f"DICOM outputs from {case.dicom_headers.name}: {exc}") from None
    return {kind: case.output_paths[kind] for kind in made}


def write_lesion_table(lesions: Lesions, path: Path) -> None:
    """One row per microbleed; a table with only its header when there are none (tab-separated
    when the name ends in .tsv, as BIDS asks)."""
    with atomic_output(path) as temporary:
        lesions.with_world().to_csv(temporary, sep="\t" if path.suffix == ".tsv" else ",", index=False, float_format="%.3f")


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
        for row, lps in zip(shown.itertuples(), lesions.centroids_lps(shown)):
            i, j, k = (int(round(c)) for c in display.TransformPhysicalPointToContinuousIndex(lps.tolist()))
            k = min(max(k, 0), image.shape[0] - 1)
            crop = (k, slice(max(j - half_y, 0), j + half_y + 1), slice(max(i - half_x, 0), i + half_x + 1))
            title = (f"#{row.lesion_id}  {row.volume_mm3:.1f} mm³  Ø{row.equivalent_diameter_mm:.1f} mm  "
                     f"z={lps[2]:.0f} mm")
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
    brain = brain if brain is not None else stripped_brain(t2s)
    outline = sitk.GetArrayFromImage(_display_lps(image_like(brain.astype(np.uint8), t2s))) > 0
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
