"""Two or more sessions of a subject (#34): which microbleeds are new, persistent or resolved since
the baseline, and each follow-up's ARIA-H microhemorrhage grade (new microbleeds: none 0, mild 1-4,
moderate 5-9, severe 10 or more).

The input is an output folder whose records hold two or more sessions of a subject (the seed layout's
sub-X_ses-Y_..., or a BIDS derivatives dataset), and the run's input folder for the T2* scans (a BIDS
derivatives dataset names its raw dataset). The baseline is the session acquired first by its T2*
sidecar's AcquisitionDateTime where every session has one, else the first in session order (ses-2
before ses-10); the table says which rule chose it. Each follow-up is compared with the baseline:
its T2* scan, brain-masked, is registered rigidly onto the baseline's (registration.py, started
from the brains' centroids, so that scans from other scanner positions start close), and the
microbleeds of both visits are matched one to one by distance in the baseline's world.

Both visits reason together: a microbleed seen at one visit alone, where the other visit's probability
map is raised near its mapped place, was there at both and missed at one (probability just under the
threshold): persistent, not new (or resolved); so is one where the other visit's T2* scan is about as
dark there (a vein or iron that the model marks at one visit and not at all at the other). This is
what keeps mimics present at both visits from counting as new, so the comparison needs both visits'
probability maps (--save-probabilities): a pair without them is an error, not a guess. A
microbleed whose mapped place lies outside the other visit's brain mask (another field of view) is
`not covered` and counts as neither.

Outputs (layout.py): longitudinal.tsv (a row per follow-up), longitudinal_microbleeds.tsv (a row per
microbleed: status, both visits' coordinates), and per follow-up under longitudinal/ a QC picture
(each new microbleed, baseline | follow-up) and a record (the registration's parameters, the settings,
the counts). Superficial siderosis and ARIA-E are not detected; the grade counts what the model found:
a research measure, not a diagnosis.
"""

from __future__ import annotations

import json
import logging
import math
import re
import textwrap
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from . import decisions, layout, records
from .brain import stripped_brain
from .cases import Case, CaseError, InputFolderError, seed_cases
from .files import atomic_output
from .lesions import WORLD_COLUMNS, centroids_lps
from .registration import Registration, register_rigid

log = logging.getLogger(__name__)

#: ARIA-H microhemorrhage grades: the most new microbleeds each grade holds.
ARIA_H_GRADES = (("none", 0), ("mild", 4), ("moderate", 9), ("severe", math.inf))
LIMITS = ("superficial siderosis and ARIA-E are not detected; the grade counts the microbleeds the model found (or "
          "a rater's finished review kept and added): a research measure, not a diagnosis")
#: The QC picture shows at most this many new microbleeds (the most probable); the caption says how many more.
QC_MAX_NEW = 12
QC_FIELD_OF_VIEW_MM = 40.0
#: The shell around a place whose median is its surroundings' signal (mm beyond the place's radius).
DARKNESS_SHELL_MM = (2.0, 6.0)
#: How far a mapped place may lie from where the other visit shows it (the registration's error, mm).
REGISTRATION_ERROR_MM = 1.0

PAIR_COLUMNS = ["subject", "baseline", "follow_up", "interval_days", "new", "persistent", "resolved",
                "aria_h_microhemorrhage_grade", "persistent_seen_once", "not_covered", "baseline_by", "status",
                "message", "baseline_case", "follow_up_case", "baseline_microbleeds", "follow_up_microbleeds"]
MICROBLEED_COLUMNS = ["subject", "baseline", "follow_up", "status", "seen_at", "baseline_lesion_id",
                      "follow_up_lesion_id", "baseline_x_ras_mm", "baseline_y_ras_mm", "baseline_z_ras_mm",
                      "follow_up_x_ras_mm", "follow_up_y_ras_mm", "follow_up_z_ras_mm", "distance_mm",
                      "baseline_probability", "follow_up_probability", "baseline_darkness", "follow_up_darkness"]


def aria_h_grade(new: int) -> str:
    return next(grade for grade, most in ARIA_H_GRADES if new <= most)


@dataclass(frozen=True, kw_only=True)
class LongitudinalSettings:
    """How two visits' microbleeds are told apart (chosen on a validation draw of visit pairs:
    benchmarks/visit_pairs.py)."""

    match_distance_mm: float = 5.0  # detections of both visits this close (after registration) are one microbleed
    #: A microbleed seen at one visit only, where the other visit's probability exceeds this within
    #: search_radius_mm of its mapped place, was missed there: persistent.
    raised_probability: float = 0.1
    search_radius_mm: float = 3.0
    #: ...or where the other visit's T2* scan is dark there too, at least this share of the darkness
    #: (_darkness) where it was seen: a vein or iron that the model marks at one visit only is dark at
    #: both, a new microbleed only at the follow-up. Not asked of a place darker by less than min_darkness.
    dark_share: float = 0.5
    min_darkness: float = 0.1


class PairError(Exception):
    """A baseline/follow-up pair that cannot be compared: reported in its row, the others go on."""


@dataclass(frozen=True)
class Visit:
    """One session's case: its record, its T2* scan (None: not found in the input folder) and when
    it was acquired (the sidecar's AcquisitionDateTime)."""

    record: records.CaseRecord
    t2s_path: Path | None
    acquired: datetime | None

    @property
    def case_id(self) -> str:
        return self.record["case_id"]

    @property
    def session(self) -> str:
        return self.record["session"]


@dataclass(frozen=True)
class Series:
    """One subject's sessions of one series (the same case name but for the session), baseline first."""

    subject: str
    visits: list[Visit]
    baseline_by: str  # "AcquisitionDateTime" or "session order"


@dataclass(frozen=True)
class Scan:
    """What a comparison reads of a visit: its T2* scan (brain-masked), brain, microbleed mask,
    probability map and microbleeds."""

    t2s: sitk.Image
    brain: np.ndarray  # bool, (z, y, x)
    mask: sitk.Image
    probability: sitk.Image
    microbleeds: pd.DataFrame  # lesions.LESION_COLUMNS
    microbleeds_from: str = "model"  # or "review by <rater>" (visit_microbleeds)

    def centroid_lps(self) -> np.ndarray:
        centre = np.argwhere(self.brain).mean(0)[::-1]
        return np.array(self.t2s.TransformContinuousIndexToPhysicalPoint(centre.tolist()))


def raw_dataset(output_dir: Path) -> Path | None:
    """The raw dataset a BIDS derivatives dataset was made from (its description's DatasetLinks), or None."""
    try:
        description = json.loads((Path(output_dir) / layout.DATASET_DESCRIPTION).read_text())
        link = urlparse(description["DatasetLinks"]["raw"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(unquote(link.path)) if link.scheme == "file" else None


def _t2s_paths(input_dir: Path) -> dict[str, Path]:
    """case id -> its T2* scan, as the run found them (seed layout or BIDS dataset)."""
    from .bids import bids_cases, is_bids_dataset  # pybids only for BIDS

    cases = bids_cases(input_dir, (layout.REFERENCE_CHANNEL,)) if is_bids_dataset(input_dir) else seed_cases(input_dir)
    return {case.case_id: case.channel_paths[layout.REFERENCE_CHANNEL] for case in cases}


def acquired(t2s_path: Path | None) -> datetime | None:
    """The AcquisitionDateTime of a scan's JSON sidecar (UTC where it names a zone), or None."""
    if t2s_path is None:
        return None
    try:
        value = json.loads((t2s_path.parent / layout.sidecar_name(t2s_path.name)).read_text())["AcquisitionDateTime"]
        when = datetime.fromisoformat(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return when.astimezone(timezone.utc).replace(tzinfo=None) if when.tzinfo else when


def _session_order(session: str) -> list:
    """Sessions in natural order: ses-2 before ses-10, numbers before words."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", session) if part]


def find_series(output_dir: Path, input_dir: Path, participants: tuple[str, ...] = ()) -> list[Series]:
    """Every series with two or more sessions among the output folder's records (of these participants,
    with or without sub-; all when none are given), baseline first."""
    t2s = _t2s_paths(input_dir)
    wanted = {p.removeprefix("sub-") for p in participants}
    found = defaultdict(list)
    for record in records.read_records(output_dir):
        if record.get("session") and (not wanted or record["subject"] in wanted):
            path = t2s.get(record["case_id"])
            found[layout.without_session(record["case_id"], record["session"])].append(
                Visit(record, path, acquired(path)))
    series = []
    for visits in found.values():
        if len(visits) < 2:
            continue
        if all(visit.acquired for visit in visits):
            visits, baseline_by = sorted(visits, key=lambda v: v.acquired), "AcquisitionDateTime"
        else:
            visits, baseline_by = sorted(visits, key=lambda v: _session_order(v.session)), "session order"
        series.append(Series(visits[0].record["subject"], visits, baseline_by))
    return sorted(series, key=lambda s: s.visits[0].case_id)


def visit_microbleeds(output_dir: Path, record: records.CaseRecord) -> tuple[pd.DataFrame, str]:
    """A visit's microbleeds and whose they are: where a rater finished a review of the current mask
    (decisions.reviewed_values: the latest), the detections they accepted and the microbleeds they
    added (numbered after the table's, ADDED_DIAMETER_MM across), "review by <rater>"; else its lesion
    table, "model"."""
    table = decisions.detections(output_dir, record)
    reviewed = decisions.reviewed_values(output_dir, record)
    if reviewed["review_status"] != "done":
        return table, "model"
    rater = reviewed["review_rater"]
    review = decisions.read_reviews(output_dir, record).current[rater]
    accepted = table[[review["detections"].get(str(int(i)), {}).get("decision") == "accept" for i in table["lesion_id"]]]
    first = int(table["lesion_id"].max()) + 1 if len(table) else 1
    added = pd.DataFrame([{"lesion_id": first + n, "equivalent_diameter_mm": decisions.ADDED_DIAMETER_MM,
                           **dict(zip(WORLD_COLUMNS, (a["x_ras_mm"], a["y_ras_mm"], a["z_ras_mm"])))}
                          for n, a in enumerate(review["added"])], columns=table.columns)
    parts = [frame for frame in (accepted, added) if len(frame)]  # pandas warns on concatenating empty frames
    return (pd.concat(parts, ignore_index=True) if parts else table.iloc[:0]), f"review by {rater}"


def _read_scan(output_dir: Path, visit: Visit) -> Scan:
    record = visit.record
    if record.get("status") != "ok":
        raise PairError(f"{visit.case_id}: {record.get('status')}: {'; '.join(record.get('error_messages', []))}")
    outputs = record.get("outputs", {})
    if "probability" not in outputs:
        raise PairError(f"{visit.case_id}: no probability map: run the sessions with --save-probabilities, which "
                        f"the comparison needs to tell a microbleed missed at one visit from a new one")
    if visit.t2s_path is None or not visit.t2s_path.is_file():
        raise PairError(f"{visit.case_id}: its {layout.REFERENCE_CHANNEL} scan is not in the input folder")
    t2s = sitk.ReadImage(str(visit.t2s_path), sitk.sitkFloat32)
    brain = (sitk.GetArrayFromImage(sitk.ReadImage(str(output_dir / outputs["brain_mask"]))) > 0
             if "brain_mask" in outputs else stripped_brain(t2s))  # none written: skull-stripped as read
    masked = sitk.GetImageFromArray(sitk.GetArrayFromImage(t2s) * brain)
    masked.CopyInformation(t2s)
    return Scan(masked, brain, sitk.ReadImage(str(output_dir / outputs["mask"])),
                 sitk.ReadImage(str(output_dir / outputs["probability"]), sitk.sitkFloat32),
                 *visit_microbleeds(output_dir, record))


def _moved(image: sitk.Image, transform: sitk.Euler3DTransform) -> sitk.Image:
    """The image with its header moved (no resampling): its world point p shows what `image` shows at
    transform(p)."""
    moved = sitk.Image(image)
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    moved.SetDirection((rotation.T @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    moved.SetOrigin(transform.GetInverse().TransformPoint(image.GetOrigin()))
    return moved


def _composed(outer: sitk.Euler3DTransform, inner: sitk.Euler3DTransform) -> sitk.Euler3DTransform:
    """p → outer(inner(p)), about inner's centre."""
    centre = np.array(inner.GetCenter())
    composed = sitk.Euler3DTransform()
    composed.SetCenter(centre.tolist())
    composed.SetMatrix((np.array(outer.GetMatrix()).reshape(3, 3) @ np.array(inner.GetMatrix()).reshape(3, 3)).ravel().tolist())
    composed.SetTranslation((np.array(outer.TransformPoint(inner.TransformPoint(centre.tolist()))) - centre).tolist())
    return composed


#: Each pass starts where the last ended (the follow-up's header moved). One pass, from the brains'
#: centroids, stopped short of the optimum in 1 of 7 noise draws of the tests' 10° and 10 mm pair (3 mm
#: off at the brain's edge); a second reached it in all (0.3 mm or closer).
REGISTRATION_PASSES = 2


def register_visits(baseline: Scan, follow_up: Scan) -> tuple[Registration, np.ndarray]:
    """The rigid transform from the baseline's world to the follow-up's (ITK's fixed → moving), and
    the shift of the brains' centroids it was started from; registration.py's check bounds each pass,
    so the first bounds what the brains' centroids do not explain. Mutual information: before the
    first pass (from the centroids) and after the last."""
    shift = follow_up.centroid_lps() - baseline.centroid_lps()
    current = sitk.Euler3DTransform()
    current.SetCenter(baseline.t2s.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in baseline.t2s.GetSize()]))
    current.SetTranslation(shift.tolist())
    passes = []
    for _ in range(REGISTRATION_PASSES):
        try:
            passes.append(register_rigid(_moved(follow_up.t2s, current), baseline.t2s, "follow-up T2S"))
        except CaseError as error:
            raise PairError(f"the follow-up's registration onto the baseline failed: {error}") from None
        current = _composed(current, passes[-1].transform)
    rotation = math.degrees(math.acos(float(np.clip((np.trace(np.array(current.GetMatrix()).reshape(3, 3)) - 1) / 2,
                                                    -1.0, 1.0))))
    return Registration(current, rotation, float(np.linalg.norm(current.GetTranslation())),
                        passes[0].mutual_information_before, passes[-1].mutual_information_after,
                        sum(found.seconds for found in passes)), shift


def _neighbourhood(scan: Scan, point_lps: np.ndarray, reach_mm: float) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The box of the scan's grid `reach_mm` around a point and its voxels' distances from the point
    (mm); None where the point lies outside the scan's brain (that visit cannot say)."""
    index = np.array(scan.t2s.TransformPhysicalPointToContinuousIndex(point_lps.tolist()))[::-1]
    nearest = np.round(index).astype(int)
    if not all(0 <= i < n for i, n in zip(nearest, scan.brain.shape)) or not scan.brain[tuple(nearest)]:
        return None
    spacing = np.array(scan.t2s.GetSpacing())[::-1]
    reach = np.ceil(reach_mm / spacing).astype(int)
    box = tuple(slice(max(i - r, 0), min(i + r + 1, n)) for i, r, n in zip(nearest, reach, scan.brain.shape))
    offsets = np.ogrid[box]
    return box, np.sqrt(sum(((o - c) * s) ** 2 for o, c, s in zip(offsets, index, spacing)))


def _probability_near(scan: Scan, point_lps: np.ndarray, radius_mm: float) -> float | None:
    """The highest probability within `radius_mm` of a point (at least its nearest voxel's); None
    outside the scan's brain."""
    found = _neighbourhood(scan, point_lps, radius_mm)
    if found is None:
        return None
    box, distance = found
    return float(sitk.GetArrayViewFromImage(scan.probability)[box][distance <= max(radius_mm, distance.min())].max())


def _darkness(scan: Scan, point_lps: np.ndarray, radius_mm: float) -> float | None:
    """How much darker than its surroundings a place of the T2* scan is: 1 - the mean of its darkest
    voxels (as many as lie within `radius_mm` of the point, found within REGISTRATION_ERROR_MM more)
    over the median of the brain in a shell DARKNESS_SHELL_MM beyond; None outside the brain."""
    inner, outer = DARKNESS_SHELL_MM
    found = _neighbourhood(scan, point_lps, radius_mm + outer)
    if found is None:
        return None
    box, distance = found
    values, brain = sitk.GetArrayViewFromImage(scan.t2s)[box], scan.brain[box]
    shell = values[brain & (distance >= radius_mm + inner) & (distance <= radius_mm + outer)]
    background = float(np.median(shell)) if shell.size else 0.0
    near = np.sort(values[brain & (distance <= radius_mm + REGISTRATION_ERROR_MM)])
    if background <= 0 or not near.size:
        return None
    count = max(int((brain & (distance <= radius_mm)).sum()), 1)
    return 1 - float(near[:count].mean()) / background


def _ras(points_lps: np.ndarray) -> np.ndarray:
    return points_lps * [-1, -1, 1]


def classify(baseline: Scan, follow_up: Scan, transform: sitk.Transform,
             settings: LongitudinalSettings = LongitudinalSettings()) -> pd.DataFrame:
    """One row per microbleed of either visit: matched ones are persistent; one seen at a single
    visit is persistent where the other visit's probability is raised near its mapped place or its
    T2* scan is dark there too (LongitudinalSettings), else new (follow-up) or resolved (baseline),
    or not covered outside the other visit's brain. `transform` maps the baseline's world onto the
    follow-up's."""
    # float and (n, 3) also for a table without rows (read from a header alone: no dtype)
    at_baseline, at_follow_up = (centroids_lps(scan.microbleeds).astype(float).reshape(-1, 3)
                                 for scan in (baseline, follow_up))
    inverse = transform.GetInverse()
    baseline_moved = np.array([transform.TransformPoint(p.tolist()) for p in at_baseline]).reshape(-1, 3)
    follow_up_moved = np.array([inverse.TransformPoint(p.tolist()) for p in at_follow_up]).reshape(-1, 3)
    distances = cdist(at_baseline, follow_up_moved)
    pairs = []
    if distances.size:
        rows, columns = linear_sum_assignment(np.where(distances <= settings.match_distance_mm, distances, 1e9))
        pairs = [(i, j) for i, j in zip(rows, columns) if distances[i, j] <= settings.match_distance_mm]
    found = []

    def row(status, seen_at, i, j, base_lps, follow_lps, probabilities, darkness=(None, None), distance=None):
        found.append({"status": status, "seen_at": seen_at,
                      "baseline_lesion_id": None if i is None else int(baseline.microbleeds["lesion_id"].iloc[i]),
                      "follow_up_lesion_id": None if j is None else int(follow_up.microbleeds["lesion_id"].iloc[j]),
                      **dict(zip(MICROBLEED_COLUMNS[7:13], [*_ras(base_lps), *_ras(follow_lps)])),
                      "distance_mm": distance, "baseline_probability": probabilities[0],
                      "follow_up_probability": probabilities[1], "baseline_darkness": darkness[0],
                      "follow_up_darkness": darkness[1]})

    def seen_once(seen: Scan, other: Scan, index: int, place: np.ndarray, mapped: np.ndarray, otherwise: str):
        """Its status, the other visit's probability near its mapped place, and the darkness where it
        was seen and at the other visit."""
        probability = _probability_near(other, mapped, settings.search_radius_mm)
        if probability is None:
            return "not covered", None, None, None
        radius = seen.microbleeds["equivalent_diameter_mm"].iloc[index] / 2
        own, there = _darkness(seen, place, radius), _darkness(other, mapped, radius)
        dark_at_both = own is not None and there is not None and own >= settings.min_darkness and \
            there >= settings.dark_share * own
        return ("persistent" if probability > settings.raised_probability or dark_at_both else otherwise,
                probability, own, there)

    for i, j in pairs:
        row("persistent", "both", i, j, at_baseline[i], at_follow_up[j], (
            baseline.microbleeds["max_probability"].iloc[i], follow_up.microbleeds["max_probability"].iloc[j]),
            distance=distances[i, j])
    for j in sorted(set(range(len(at_follow_up))) - {j for _, j in pairs}):
        status, before, own, there = seen_once(follow_up, baseline, j, at_follow_up[j], follow_up_moved[j], "new")
        row(status, "follow-up", None, j, follow_up_moved[j], at_follow_up[j],
            (before, follow_up.microbleeds["max_probability"].iloc[j]), (there, own))
    for i in sorted(set(range(len(at_baseline))) - {i for i, _ in pairs}):
        status, after, own, there = seen_once(baseline, follow_up, i, at_baseline[i], baseline_moved[i], "resolved")
        row(status, "baseline", i, None, at_baseline[i], baseline_moved[i],
            (baseline.microbleeds["max_probability"].iloc[i], after), (own, there))
    return pd.DataFrame(found, columns=MICROBLEED_COLUMNS[3:]).astype({"baseline_lesion_id": "Int64",
                                                                     "follow_up_lesion_id": "Int64"})


def _counts(microbleeds: pd.DataFrame) -> dict:
    counted = {status: int((microbleeds["status"] == status).sum()) for status in ("new", "persistent", "resolved")}
    return {**counted, "aria_h_microhemorrhage_grade": aria_h_grade(counted["new"]),
            "persistent_seen_once": int(((microbleeds["status"] == "persistent") & (microbleeds["seen_at"] != "both")).sum()),
            "not_covered": int((microbleeds["status"] == "not covered").sum())}


def _interval_days(baseline: Visit, follow_up: Visit) -> float | None:
    if baseline.acquired is None or follow_up.acquired is None:
        return None
    return round((follow_up.acquired - baseline.acquired).total_seconds() / 86400, 1)


def compare_pair(output_dir: Path, series: Series, follow_up: Visit,
                 settings: LongitudinalSettings = LongitudinalSettings()) -> tuple[dict, pd.DataFrame]:
    """A follow-up against its series' baseline: its longitudinal.tsv row and its microbleeds (the
    QC picture and the record are written)."""
    baseline = series.visits[0]
    names = {"subject": series.subject, "baseline": baseline.session, "follow_up": follow_up.session}
    row = {**names, "interval_days": _interval_days(baseline, follow_up), "baseline_by": series.baseline_by,
           "baseline_case": baseline.case_id, "follow_up_case": follow_up.case_id}
    paths = layout.longitudinal_paths(follow_up.case_id)
    record = {**row, "settings": asdict(settings), "limits": LIMITS}
    microbleeds = pd.DataFrame(columns=MICROBLEED_COLUMNS)
    try:
        scans = _read_scan(output_dir, baseline), _read_scan(output_dir, follow_up)
        registration, shift = register_visits(*scans)
        found = classify(*scans, registration.transform, settings)
        row |= {**_counts(found), "status": "ok", "message": "", "baseline_microbleeds": scans[0].microbleeds_from,
                "follow_up_microbleeds": scans[1].microbleeds_from}
        record["registration"] = {**registration.as_record(), "started_from_brain_centroid_shift_mm":
                                  [round(float(s), 3) for s in shift],
                                  "maps": "baseline world (LPS mm) to the follow-up's, ITK's fixed to moving"}
        write_qc_picture(output_dir / paths["qc"], row, scans, registration, found)
        record["outputs"] = {"qc": paths["qc"]}
        microbleeds = found.assign(**names)[MICROBLEED_COLUMNS]
    except (PairError, decisions.ReviewError) as error:
        row |= {"status": "error", "message": str(error)}
        log.error("%s: %s", follow_up.case_id, error)
    record |= {key: row.get(key) for key in PAIR_COLUMNS if key not in record}
    record |= {"versions": records.versions(), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with atomic_output(output_dir / paths["record"]) as temporary:
        temporary.write_text(json.dumps(record, indent=2, default=str))
    return row, microbleeds


def compare_visits(output_dir: Path, input_dir: Path | None = None,
                   settings: LongitudinalSettings = LongitudinalSettings(), participants: tuple[str, ...] = ()
                   ) -> list[dict]:
    """Every follow-up of every series with two or more sessions in `output_dir` (of `participants`;
    all when none are given) against its baseline; writes longitudinal.tsv and
    longitudinal_microbleeds.tsv (nothing: no series) and returns the rows. `input_dir`: the run's
    input folder; None: the raw dataset a BIDS derivatives dataset names."""
    output_dir = Path(output_dir)
    input_dir = input_dir or raw_dataset(output_dir)
    if input_dir is None:
        raise ValueError(f"{output_dir}: give the input folder of the run (the T2* scans are registered)")
    rows, tables = [], []
    for series in find_series(output_dir, Path(input_dir), participants):
        for follow_up in series.visits[1:]:
            row, microbleeds = compare_pair(output_dir, series, follow_up, settings)
            rows.append(row)
            tables.append(microbleeds)
            log.info("%s: %s → %s: %s", series.subject, series.visits[0].session, follow_up.session,
                     row["message"] or f"{row['new']} new, {row['persistent']} persistent, {row['resolved']} "
                                       f"resolved; ARIA-H microhemorrhage grade {row['aria_h_microhemorrhage_grade']}")
    if rows:
        with atomic_output(output_dir / layout.LONGITUDINAL_TSV) as temporary:
            pd.DataFrame(rows, columns=PAIR_COLUMNS).to_csv(temporary, sep="\t", index=False, na_rep="n/a")
        with atomic_output(output_dir / layout.LONGITUDINAL_MICROBLEEDS_TSV) as temporary:
            pd.concat(tables, ignore_index=True).to_csv(temporary, sep="\t", index=False, na_rep="n/a",
                                                        float_format="%.3f")
    return rows


def _patch(centre_lps: np.ndarray, spacing_mm: float, field_of_view_mm: float) -> sitk.Image:
    """An axial slice around a point, in LPS order: shown as is, radiological (patient left on the
    right, anterior at the top)."""
    size = int(round(field_of_view_mm / spacing_mm))
    patch = sitk.Image([size, size, 1], sitk.sitkFloat32)
    patch.SetSpacing([spacing_mm] * 3)
    half = spacing_mm * (size - 1) / 2
    patch.SetOrigin((np.asarray(centre_lps) - [half, half, 0.0]).tolist())
    return patch


def write_qc_picture(path: Path, row: dict, scans: tuple[Scan, Scan], registration: Registration,
                     microbleeds: pd.DataFrame) -> None:
    """Each new microbleed (the most probable QC_MAX_NEW) in an axial slice of both visits side by
    side, the baseline moved onto the follow-up's world, the follow-up's outline on both; without new
    microbleeds, the brains' centre in both (the registration at a glance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, follow_up = scans
    new = microbleeds[microbleeds["status"] == "new"].nlargest(QC_MAX_NEW, "follow_up_probability")
    spacing = float(min(follow_up.t2s.GetSpacing()[:2]))
    if len(new):
        places = [(_ras(np.array([r.follow_up_x_ras_mm, r.follow_up_y_ras_mm, r.follow_up_z_ras_mm])),
                   f"#{int(r.follow_up_lesion_id)} p={r.follow_up_probability:.2f}", QC_FIELD_OF_VIEW_MM)
                  for r in new.itertuples()]
    else:
        places = [(follow_up.centroid_lps(), "brain centre", 4 * QC_FIELD_OF_VIEW_MM)]
    # each visit's window from its whole brain: the panels of one visit compare, whatever they show
    windows = [tuple(np.percentile(sitk.GetArrayViewFromImage(scan.t2s)[scan.brain], (1, 99.5)) + [0, 1e-6])
               for scan in scans]
    panels = []
    for centre, title, field_of_view in places:
        patch = _patch(centre, spacing, field_of_view)
        moved = sitk.Resample(baseline.t2s, patch, registration.transform.GetInverse(), sitk.sitkLinear, 0.0)
        shown = sitk.Resample(follow_up.t2s, patch, sitk.Transform(), sitk.sitkLinear, 0.0)
        outline = sitk.GetArrayFromImage(sitk.Resample(follow_up.mask, patch, sitk.Transform(),
                                                       sitk.sitkNearestNeighbor, 0))[0]
        panels += [(sitk.GetArrayFromImage(moved)[0], outline, windows[0], f"baseline (session {row['baseline']})\n{title}"),
                   (sitk.GetArrayFromImage(shown)[0], outline, windows[1], f"follow-up (session {row['follow_up']})\n{title}")]
    columns = min(4, len(panels))
    figure, axes = plt.subplots(math.ceil(len(panels) / columns), columns, squeeze=False, facecolor="black",
                                figsize=(3 * columns, 3 * math.ceil(len(panels) / columns) + 0.9))
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, (picture, outline, (low, high), title) in zip(axes.flat, panels):
        axis.imshow(picture, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        if outline.any():
            axis.contour(outline, levels=[0.5], colors="#ff3030", linewidths=1.0)
        axis.set_title(title, color="white", fontsize=8)
    more = f" (showing the {QC_MAX_NEW} most probable)" if row["new"] > QC_MAX_NEW else ""
    caption = [f"{row['subject']}: session {row['baseline']} → {row['follow_up']}: {row['new']} new{more}, "
               f"{row['persistent']} persistent, {row['resolved']} resolved; ARIA-H microhemorrhage grade "
               f"{row['aria_h_microhemorrhage_grade']}", f"registration {registration.summary()}; red: the follow-up's "
               f"outline, on the baseline moved onto the follow-up", LIMITS]
    lines = [part for line in caption for part in textwrap.wrap(line, int(15 * figure.get_figwidth()))]
    figure.suptitle("\n".join(lines), color="white", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.16 * len(lines) / figure.get_figheight()))
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, facecolor="black", format="png")
    plt.close(figure)


def main(output_dir: Path, input_dir: Path | None = None, participants: tuple[str, ...] = (),
         expected: bool = True) -> int:
    """`mixmicrobleednet longitudinal` and the BIDS App's group level (`expected` False: a dataset
    without a subject of two sessions is no failure): compare_visits, its outcome logged; the exit
    code as a run's (runner.py): 0 every follow-up compared, 1 one failed or none was expected and
    found, 2 the comparison could not start."""
    try:
        rows = compare_visits(output_dir, input_dir, participants=participants)
    except (ValueError, InputFolderError, OSError) as exc:
        log.error("%s", exc)
        return 2
    if not rows:
        if expected:
            log.error("%s: no subject with two or more sessions among the records", output_dir)
        return int(expected)
    failed = sum(row["status"] != "ok" for row in rows)
    log.log(logging.ERROR if failed else logging.INFO, "%s: %d follow-up(s) compared with their baseline, %d failed; "
            "%s", Path(output_dir) / layout.LONGITUDINAL_TSV, len(rows), failed, LIMITS)
    return 1 if failed else 0
