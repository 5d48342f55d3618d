"""`mixmicrobleednet review OUTPUT --export`: a self-contained HTML page per reviewed case
(layout.review_report_path), readable offline and by anyone without the app: the case, an overview
(the axial slices that hold a microbleed, the mask in red, added microbleeds in yellow), per
detection and per added microbleed a 40 mm crop in three planes, the table with every rater's
decision, what each rater added, what the run set aside, their notes, when they finished, and their
agreement. Stale reviews are listed as such, never mixed in. Each finished review's reviewed mask is written too.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__, layout, records
from .. import decisions
from ..files import atomic_output
from ..agreement import cohen_kappa, paired
from ..lesions import WORLD_COLUMNS

log = logging.getLogger(__name__)

CROP_MM = 40.0
OVERVIEW_MAX_SLICES = 12


def _png(figure) -> str:
    """A matplotlib figure as an <img> with the PNG inside it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight", facecolor="black")
    plt.close(figure)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


class _Volumes:
    """The case's T2* (the mask alone when the scan is not at hand) and mask, in LPS orientation:
    arrays (z, y, x) whose axial slices show the patient's left on the right (radiological), as the
    QC pictures do."""

    def __init__(self, mask_path: Path, t2s_path: Path | None):
        mask = sitk.DICOMOrient(sitk.ReadImage(str(mask_path)), "LPS")
        self.grid = mask
        self.mask = sitk.GetArrayFromImage(mask) > 0
        if t2s_path is not None:
            scan = sitk.Resample(sitk.ReadImage(str(t2s_path), sitk.sitkFloat32), mask, sitk.Transform(),
                                 sitk.sitkLinear, 0.0)
            self.scan = sitk.GetArrayFromImage(scan)
        else:
            self.scan = self.mask.astype(np.float32)
        inside = self.scan[self.scan > 0]
        self.window = (np.percentile(inside, (1, 99.5)) if inside.size else (0.0, 1.0))
        self.spacing_zyx = np.array(mask.GetSpacing()[::-1])

    def index(self, ras_mm) -> np.ndarray:
        """(z, y, x) of a RAS point on these arrays."""
        lps = decisions.lps_of([ras_mm])[0]
        return np.array(self.grid.TransformPhysicalPointToContinuousIndex(lps.tolist())[::-1])


def _show(axis, scan, mask, window, extent, circles=()):
    """A slice with the mask in translucent red (the dark dot stays visible through it) and circles
    around some points (x, y in the extent's units)."""
    axis.imshow(scan, cmap="gray", vmin=window[0], vmax=window[1], extent=extent, interpolation="nearest")
    red = np.zeros((*mask.shape, 4))
    red[mask] = (1.0, 0.0, 0.0, 0.45)
    axis.imshow(red, extent=extent, interpolation="nearest")
    for x, y in circles:
        axis.plot(x, y, "o", markersize=16, markerfacecolor="none", markeredgecolor="yellow", markeredgewidth=1.5)
    axis.set_axis_off()


def overview(volumes: _Volumes, added_zyx: list[np.ndarray]) -> str:
    """The axial slices that hold a detection or an added microbleed (at most OVERVIEW_MAX_SLICES),
    the added ones circled."""
    import matplotlib

    matplotlib.use("Agg")  # no display in containers and CI
    import matplotlib.pyplot as plt

    depth = volumes.mask.shape[0]
    slices = sorted({int(z) for z in np.flatnonzero(volumes.mask.any(axis=(1, 2)))}
                    | {int(round(p[0])) for p in added_zyx if 0 <= round(p[0]) < depth})
    if not slices:
        slices = [depth // 2]
    slices = [slices[i] for i in np.linspace(0, len(slices) - 1, min(len(slices), OVERVIEW_MAX_SLICES)).astype(int)]
    columns = min(4, len(slices))
    rows = -(-len(slices) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False, facecolor="black")
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, z in zip(axes.ravel(), slices):
        marks = [(p[2], p[1]) for p in added_zyx if round(p[0]) == z]
        height, width = volumes.mask.shape[1:]
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
        _show(axis, volumes.scan[z], volumes.mask[z], volumes.window, extent, marks)
        axis.set_aspect(volumes.spacing_zyx[1] / volumes.spacing_zyx[2])
        axis.set_title(f"axial slice {z}", color="white", fontsize=9)
    return _png(figure)


def crops(volumes: _Volumes, point_zyx: np.ndarray, title: str) -> str:
    """Axial, coronal and sagittal crops (CROP_MM wide, in mm) centred on a point, marked by a
    crosshair with a gap, so that the point itself stays visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(9, 3.2), facecolor="black")
    centre = np.clip(np.round(point_zyx).astype(int), 0, np.array(volumes.mask.shape) - 1)
    spacing = volumes.spacing_zyx
    # plane: the axes shown (rows, columns) and whether rows run upwards (superior at the top)
    for axis, (name, fixed, rows_axis, columns_axis) in zip(axes, (("axial", 0, 1, 2), ("coronal", 1, 0, 2),
                                                                  ("sagittal", 2, 0, 1))):
        take = [slice(None)] * 3
        take[fixed] = centre[fixed]
        scan, mask = volumes.scan[tuple(take)], volumes.mask[tuple(take)]
        # millimetres from the point along each shown axis; z grows upwards, so rows are flipped there
        rows_mm = (np.arange(scan.shape[0]) - point_zyx[rows_axis]) * spacing[rows_axis]
        columns_mm = (np.arange(scan.shape[1]) - point_zyx[columns_axis]) * spacing[columns_axis]
        if rows_axis == 0:
            scan, mask, rows_mm = scan[::-1], mask[::-1], -rows_mm[::-1]
        half_row, half_column = spacing[rows_axis] / 2, spacing[columns_axis] / 2
        extent = (columns_mm[0] - half_column, columns_mm[-1] + half_column, rows_mm[-1] + half_row,
                  rows_mm[0] - half_row)
        _show(axis, scan, mask, volumes.window, extent)
        for start, end in ((4, 10), (-4, -10)):
            axis.plot([start, end], [0, 0], color="yellow", linewidth=1)
            axis.plot([0, 0], [start, end], color="yellow", linewidth=1)
        axis.set_xlim(-CROP_MM / 2, CROP_MM / 2)
        axis.set_ylim(CROP_MM / 2, -CROP_MM / 2)
        axis.set_title(name, color="white", fontsize=9)
    figure.suptitle(title, color="white", fontsize=10)
    return _png(figure)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return html.escape(f"{value:.3f}" if isinstance(value, float) else str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#1b1b1b}table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#eef1f4}img{max-width:100%}
.stale{color:#b3261e}figure{margin:8px 0}"""


def case_page(output_dir: Path, record: dict, input_dir: Path | None) -> str:
    """The HTML page of one case's reviews."""
    table = decisions.detections(output_dir, record)
    reviews = decisions.read_reviews(output_dir, record, set(table["lesion_id"].astype(int)))
    raters = sorted(reviews.current)
    t2s = decisions.input_path(record, input_dir)
    volumes = _Volumes(decisions.output_path(output_dir, record, "mask"), t2s)
    detected = [(int(row.lesion_id), [row.centroid_x_ras_mm, row.centroid_y_ras_mm, row.centroid_z_ras_mm])
                for row in table.itertuples()]
    added = [(rater, a) for rater in raters for a in reviews.current[rater]["added"]]
    points = [volumes.index(ras) for _, ras in detected] + \
             [volumes.index([a["x_ras_mm"], a["y_ras_mm"], a["z_ras_mm"]]) for _, a in added]
    parts = [f"<h1>{html.escape(record['case_id'])}: microbleed review</h1>",
             f"<p>Model {_cell(record.get('model', {}).get('name'))}, {len(table)} detection(s); mask "
             f"{_cell(record['outputs']['mask'])} (SHA-256 {_cell(reviews.mask_sha256)}); "
             f"{'T2* ' + _cell(t2s.name) if t2s else 'no T2* scan at hand: the mask alone'}; "
             f"page written by mixmicrobleednet {__version__} at {decisions.now()}.</p>"]
    if reviews.problems:
        parts.append("<p class=stale>Review files not used: " + "; ".join(map(html.escape, reviews.problems)) + "</p>")
    if reviews.stale:
        parts.append(f"<p class=stale>Stale reviews (of an earlier mask, not applied): "
                     f"{html.escape(', '.join(sorted(reviews.stale)))}</p>")
    parts += ["<h2>Overview</h2>", "<p>Axial slices with a microbleed: the mask in red, added microbleeds circled "
              "in yellow (radiological: patient left on the right).</p>", overview(volumes, points[len(detected):])]
    header = ["lesion", "max probability", "calibrated probability", "volume mm³", "region", "category", *raters]
    rows = [[int(row["lesion_id"]), row.get("max_probability"), row.get("calibrated_probability"), row.get("volume_mm3"), row.get("region"),
             row.get("region_category"),
             *(reviews.current[r]["detections"].get(str(int(row["lesion_id"])), {}).get("decision", "") for r in raters)]
            for row in table.to_dict("records")]
    parts += ["<h2>Detections and decisions</h2>", _table(header, rows)]
    parts += ["<h2>Added microbleeds</h2>", _table(["rater", "#", "x (RAS mm)", "y", "z", "region", "category", "from"],
              [[rater, a["added_id"], a["x_ras_mm"], a["y_ras_mm"], a["z_ras_mm"], a.get("region"),
                a.get("region_category"), f"set aside ({a['set_aside']})" if a.get("set_aside") else "click"]
               for rater, a in added]) if added else "<p>None.</p>"]
    marks = decisions.set_aside_marks(record)
    if marks:
        parts += ["<h2>Set aside by the run</h2>", "<p>Left out of the mask and the counts by the edge rule or the "
                  "mimic check; a rater who counted one has it among the added microbleeds.</p>",
                  _table(["step", "x (RAS mm)", "y", "z", "volume mm³", "max probability", "calibrated probability"],
                         [[m["set_aside"], *(m[c] for c in WORLD_COLUMNS), m["volume_mm3"], m["max_probability"],
                           m.get("calibrated_probability")] for m in marks])]
    summary = [[r, reviews.current[r]["done"] or "not done", *decisions.rater_values(table, reviews.current[r]).values(),
                reviews.current[r]["note"]] for r in raters]
    words = [c.removeprefix("reviewed_").replace("count_", "").replace("_", " ") for c in decisions.RATER_COLUMNS]
    parts += ["<h2>Raters</h2>", _table(["rater", "done", *words, "note"], summary)]
    if len(raters) >= 2:
        parts.append("<p>Agreement on the detections both decided (Cohen's kappa): " + "; ".join(
            f"{a} and {b}: {_cell(cohen_kappa(*paired(reviews.current[a], reviews.current[b])))}"
            for i, a in enumerate(raters) for b in raters[i + 1:]) + "</p>")
    parts.append("<h2>Each microbleed in three planes</h2>")
    for (lesion_id, _), point in zip(detected, points):
        parts.append(f"<figure>{crops(volumes, point, f'detection {lesion_id}')}</figure>")
    for (rater, a), point in zip(added, points[len(detected):]):
        parts.append(f"<figure>{crops(volumes, point, 'added by %s, #%d' % (rater, a['added_id']))}</figure>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(record['case_id'])} review"
            f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")


def export_cases(output_dir: Path, input_dir: Path | None) -> list[Path]:
    """The page of every case with a review folder, and each finished review's reviewed mask; a case
    that cannot be drawn is logged and left out."""
    written = []
    for record in records.read_records(output_dir):
        if not (output_dir / layout.review_dir(record["case_id"])).is_dir() or record.get("status") != "ok":
            continue
        try:
            page = case_page(output_dir, record, input_dir)
            for review in decisions.read_reviews(output_dir, record).current.values():
                if review["done"]:
                    decisions.write_reviewed_mask(output_dir, record, review)
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: SimpleITK's
            log.error("%s: no review page: %s", record["case_id"], exc)
            continue
        path = output_dir / layout.review_report_path(record["case_id"])
        with atomic_output(path) as temporary:
            temporary.write_text(page)
        written.append(path)
        log.info("%s", path)
    return written
