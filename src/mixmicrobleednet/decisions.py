"""A rater's review of a case, as data: OUTPUT/reviews/<case>/<rater>.json (layout.review_path).

A review holds, per detection of the model (a row of the case's lesion table, by lesion_id), the
rater's decision (accept, reject or unsure) and its time; the microbleeds the rater added (RAS world
millimetres, as the lesion table's centroids, with their MARS region where the atlas could place
them), each either clicked in the viewer or one of the marks the run set aside (the edge rule's, the
mimic check's: `set_aside` names the step), counted after all; a note; when the rater marked the case done; the rater, the package version and the SHA-256
of the mask file reviewed. It is written atomically after every decision, under a lock on the
case's review folder, so two browser tabs of one rater cannot lose each other's decisions, and each
rater has a file of their own, so raters never overwrite each other.

A review whose mask checksum is not the current mask's is stale (the case ran again): it is shown,
never applied, never changed; the rater may start again on the current mask (the stale review moves
to the folder's superseded/). A file in a review folder that is not a usable review is reported
(logged, listed), never fatal. The tool's outputs are only ever read.

Nothing here imports the web app: records.py reads `reviewed_values` from here for the reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from . import __version__, layout, regions
from .files import PARTIAL, atomic_output, folder_lock, write_image_atomic
from .lesions import WORLD_COLUMNS, centroids_lps, label_microbleeds

log = logging.getLogger(__name__)

REVIEW_VERSION = 1
DECISIONS = ("accept", "reject", "unsure")
#: A microbleed a rater adds is drawn into the reviewed mask as a ball of this diameter.
ADDED_DIAMETER_MM = 3.0
_ADDED_AXES = ("x_ras_mm", "y_ras_mm", "z_ras_mm")
_PLACE_COLUMNS = ("region", "region_category", "hemisphere")
#: The steps that set marks aside, by the name a review keeps, and where the case's record lists them.
SET_ASIDE = {"edge rule": ("edge_rule", "near_edge"), "mimic check": ("mimic_check", "mimics")}
#: A set-aside mark is named by its centre as the record rounds it (0.01 mm).
_SAME_POINT_MM = 0.01

#: reviewed_values' columns, for summary.csv and cohort.tsv:
#: - review_status: "done" (a rater marked the case done on its current mask), "in progress" (a review
#:   of the current mask, none done), "stale" (reviews of an earlier mask only), "not reviewed";
#: - reviewed_by: the raters who marked the case done, space-separated; stale_reviews: how many raters'
#:   reviews are of an earlier mask; review_problems: review files that could not be used;
#: - the rest are the latest done review's (review_rater, review_done: its time): its detections
#:   accepted, rejected, unsure and undecided, microbleeds added, reviewed_count = accepted + added (unsure
#:   and undecided are not counted), and reviewed_count per MARS category and reviewed_strictly_lobar
#:   over those (empty when one of them has no region: a run with --no-regions, or an added microbleed
#:   the atlas could not place).
RATER_COLUMNS = ["reviewed_accepted", "reviewed_rejected", "reviewed_unsure", "reviewed_undecided", "reviewed_added",
                 "reviewed_count", *[f"reviewed_count_{c}" for c in regions.CATEGORIES], "reviewed_strictly_lobar"]
REVIEW_COLUMNS = ["review_status", "reviewed_by", "review_rater", "review_done", *RATER_COLUMNS, "stale_reviews",
                  "review_problems"]


class ReviewError(ValueError):
    """A review that cannot be used or changed (unreadable, of another case or rater, malformed, a
    lesion the table does not have), a bad rater name, or a case output that is missing or lies
    outside the output folder."""


class StaleReview(ReviewError):
    """A change asked of a rater's review that was made on another mask than the current one."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_rater(name: str) -> str:
    """The rater's name, which becomes a file name (layout.RATER_PATTERN), or ReviewError."""
    if not isinstance(name, str) or not re.fullmatch(layout.RATER_PATTERN, name):
        raise ReviewError(f"{name!r}: a rater's name is letters, digits, '.', '_' and '-', starting with a letter "
                          f"or digit (64 characters at most)")
    return name


def output_path(output_dir: Path, record: dict, kind: str) -> Path:
    """A case's output of this kind (its record's `outputs`); a record's paths are data, so one that
    leads out of the output folder (.., an absolute path, a link) is refused, never read or served."""
    relative = record.get("outputs", {}).get(kind)
    if not isinstance(relative, str):
        raise ReviewError(f"{record.get('case_id')}: no {kind} in its record's outputs")
    root = Path(output_dir).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ReviewError(f"{record.get('case_id')}: its {kind} {relative!r} lies outside the output folder")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mask_sha256(output_dir: Path, record: dict) -> str | None:
    """The SHA-256 of the case's current mask file, or None when it has none (a failed case)."""
    try:
        return file_sha256(output_path(output_dir, record, "mask"))
    except (ReviewError, OSError):
        return None


def detections(output_dir: Path, record: dict) -> pd.DataFrame:
    """The case's lesion table as the run wrote it: one row per detection (missing values as NaN)."""
    path = output_path(output_dir, record, "lesions")
    try:
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except (OSError, ValueError) as exc:
        raise ReviewError(f"{record.get('case_id')}: its lesion table {path.name}: {exc}") from None


def input_path(record: dict, input_dir: Path | None, channel: str = layout.REFERENCE_CHANNEL) -> Path | None:
    """The case's T2* scan (or another channel's) in the run's input folder (the record names the
    file, not its folder): beside the other inputs (seed layout) or in the subject's anat/ folder
    (BIDS); None when absent."""
    name = next((entry.get("file") for entry in record.get("inputs", [])
                 if entry.get("channel") == channel), None)
    if input_dir is None or not isinstance(name, str) or Path(name).name != name:
        return None
    for folder in (Path(input_dir), Path(input_dir) / layout.bids_anat_dir(record["subject"], record.get("session"))):
        if (folder / name).is_file():
            return folder / name
    return None


def new_review(record: dict, rater: str, mask_checksum: str) -> dict:
    created = now()
    return {"review_version": REVIEW_VERSION, "case_id": record["case_id"], "rater": rater,
            "mask": record["outputs"]["mask"], "mask_sha256": mask_checksum, "package_version": __version__,
            "created": created, "updated": created, "detections": {}, "added": [], "note": "", "done": None}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checked(review, case_id: str, rater: str) -> dict:
    """`review` (a file's JSON value) when it is a usable review of this case by this rater, else ReviewError."""
    if not isinstance(review, dict) or review.get("review_version") != REVIEW_VERSION:
        raise ReviewError(f"not a review (review_version {REVIEW_VERSION})")
    if review.get("case_id") != case_id:
        raise ReviewError(f"a review of case {review.get('case_id')!r}, not of {case_id}")
    if review.get("rater") != rater:
        raise ReviewError(f"a review by {review.get('rater')!r}, not by the rater its name says ({rater})")
    if not isinstance(review.get("mask_sha256"), str):
        raise ReviewError("no mask checksum")
    decided = review.get("detections")
    if not isinstance(decided, dict) or not all(
            key.isdigit() and isinstance(value, dict) and value.get("decision") in DECISIONS
            for key, value in decided.items()):
        raise ReviewError(f"detections must map lesion ids to a decision ({', '.join(DECISIONS)})")
    added = review.get("added")
    if not isinstance(added, list) or not all(
            isinstance(a, dict) and isinstance(a.get("added_id"), int) and all(_finite(a.get(k)) for k in _ADDED_AXES)
            for a in added):
        raise ReviewError("added microbleeds need an added_id and finite RAS coordinates (x_ras_mm, y_ras_mm, z_ras_mm)")
    if not all(a.get("set_aside") in (None, *SET_ASIDE) for a in added):
        raise ReviewError(f"an added microbleed's set_aside names a step that sets marks aside ({', '.join(SET_ASIDE)})")
    if not isinstance(review.get("note"), str) or not isinstance(review.get("done"), (str, type(None))):
        raise ReviewError("note must be text and done a time or null")
    return review


@dataclass
class CaseReviews:
    """A case's review folder as read: the raters' reviews of the current mask, those of an earlier
    mask (stale: shown, never applied), and the files that could not be used, each with why."""

    mask_sha256: str | None
    current: dict[str, dict] = field(default_factory=dict)
    stale: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def status(self, rater: str) -> str:
        if rater in self.current:
            return "done" if self.current[rater]["done"] else "in progress"
        return "stale" if rater in self.stale else "not started"


def _is_review_output(name: str, case_id: str) -> bool:
    """What review writes into a case's folder besides the raters' files."""
    return (name == layout.SUPERSEDED_REVIEWS_DIR or layout.is_reviewed_mask_name(name)
            or name == Path(layout.review_report_path(case_id)).name)


def read_reviews(output_dir: Path, record: dict, lesion_ids: set[int] | None = None) -> CaseReviews:
    """Every rater's review of the case. A current review that names a lesion the table does not
    have (`lesion_ids`, read from the table when not given) is a problem, not applied."""
    case_id = record["case_id"]
    folder = Path(output_dir) / layout.review_dir(case_id)
    if not folder.is_dir():
        return CaseReviews(None)
    found = CaseReviews(mask_sha256(output_dir, record))
    for path in sorted(folder.iterdir()):
        if PARTIAL in path.name or _is_review_output(path.name, case_id):
            continue
        rater = layout.parse_review_name(path.name)
        try:
            if rater is None:
                raise ReviewError("not a review file (reviews are <rater>.json)")
            review = checked(json.loads(path.read_text()), case_id, rater)
            if review["mask_sha256"] != found.mask_sha256:
                found.stale[rater] = review
                continue
            if lesion_ids is None:
                lesion_ids = set(detections(output_dir, record)["lesion_id"].astype(int))
            unknown = sorted(int(k) for k in review["detections"] if int(k) not in lesion_ids)
            if unknown:
                raise ReviewError(f"decisions on lesions the table does not have: {unknown}")
            found.current[rater] = review
        except (OSError, ValueError) as exc:  # json's errors and ReviewError are ValueErrors
            found.problems.append(f"{layout.review_dir(case_id)}/{path.name}: {exc}")
            log.warning("%s", found.problems[-1])
    return found


def unknown_review_folders(output_dir: Path, case_ids: set[str]) -> list[str]:
    """Folders and files under reviews/ that belong to no case of the output folder (reported)."""
    folder = Path(output_dir) / layout.REVIEWS_DIR
    if not folder.is_dir():
        return []
    problems = [f"{layout.REVIEWS_DIR}/{path.name}: not the review folder of a case here"
                for path in sorted(folder.iterdir()) if path.name not in case_ids]
    for problem in problems:
        log.warning("%s", problem)
    return problems


def _write(path: Path, review: dict) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(review, indent=2))


def change_review(output_dir: Path, record: dict, rater: str, change: Callable[[dict], None]) -> dict:
    """Apply `change` to the rater's review of the case's current mask (a new review when there is
    none), stamp it and write it atomically, and the reviewed mask with it, all under the case's
    lock; returns the review.
    StaleReview when the rater's review is of another mask; ReviewError when it is not usable."""
    check_rater(rater)
    checksum = file_sha256(output_path(output_dir, record, "mask"))
    path = Path(output_dir) / layout.review_path(record["case_id"], rater)
    with folder_lock(path.parent):
        if path.exists():
            try:
                review = checked(json.loads(path.read_text()), record["case_id"], rater)
            except ValueError as exc:
                raise ReviewError(f"{path}: {exc}; move it away to start a new review") from None
        else:
            review = new_review(record, rater, checksum)
        if review["mask_sha256"] != checksum:
            raise StaleReview(f"{record['case_id']}: {rater}'s review is of an earlier mask (the case ran again): start "
                              f"a new review")
        change(review)
        review.update(updated=now(), package_version=__version__)
        _write(path, review)
        # the reviewed mask follows the review: there while it is done, gone when it is not
        if review["done"]:
            write_reviewed_mask(output_dir, record, review)
        else:
            (Path(output_dir) / layout.reviewed_mask_path(record["case_id"], rater)).unlink(missing_ok=True)
    return review


def record_decision(output_dir: Path, record: dict, rater: str, lesion_id: int, decision: str | None) -> dict:
    """Accept, reject or mark unsure one detection (None: take the decision back)."""
    if decision is not None and decision not in DECISIONS:
        raise ReviewError(f"{decision!r}: a decision is {', '.join(DECISIONS)}")
    if int(lesion_id) not in set(detections(output_dir, record)["lesion_id"].astype(int)):
        raise ReviewError(f"{record['case_id']}: no lesion {lesion_id} in its table")

    def change(review: dict) -> None:
        if decision is None:
            review["detections"].pop(str(int(lesion_id)), None)
        else:
            review["detections"][str(int(lesion_id))] = {"decision": decision, "time": now()}

    return change_review(output_dir, record, rater, change)


def set_aside_marks(record: dict) -> list[dict]:
    """What the run set aside (the record's lists: RAS centre, volume, probabilities), each with the
    step that set it aside (`set_aside`, a key of SET_ASIDE), for a rater to look at."""
    return [{"set_aside": step, **mark} for step, (part, key) in SET_ASIDE.items()
            for mark in (record.get(part) or {}).get(key, [])]


def _same_point(a, b) -> bool:
    return bool(np.all(np.abs(np.subtract(a, b, dtype=float)) <= _SAME_POINT_MM))


def add_microbleed(output_dir: Path, record: dict, rater: str, ras_mm: tuple[float, float, float],
                   set_aside: str | None = None) -> dict:
    """A microbleed the model missed, at a point in RAS world millimetres, with its MARS region; with
    `set_aside` (a key of SET_ASIDE), the mark that step set aside at that point, counted after all
    (once)."""
    if len(ras_mm) != 3 or not all(_finite(v) for v in ras_mm):
        raise ReviewError(f"{ras_mm!r}: an added microbleed needs three finite RAS coordinates in mm")
    if set_aside is not None:
        if set_aside not in SET_ASIDE:
            raise ReviewError(f"{set_aside!r}: not a step that sets marks aside ({', '.join(SET_ASIDE)})")
        marks = [m for m in set_aside_marks(record) if m["set_aside"] == set_aside]
        if not any(_same_point([m[c] for c in WORLD_COLUMNS], ras_mm) for m in marks):
            raise ReviewError(f"{record['case_id']}: the {set_aside} set no mark aside at {tuple(ras_mm)} "
                              f"(steps: {', '.join(SET_ASIDE)})")
    place = locate_added(record, ras_mm)

    def change(review: dict) -> None:
        if set_aside and any(a.get("set_aside") == set_aside and _same_point([a[k] for k in _ADDED_AXES], ras_mm)
                             for a in review["added"]):
            raise ReviewError(f"{record['case_id']}: {rater} counts the mark at {tuple(ras_mm)} already")
        number = max((a["added_id"] for a in review["added"]), default=0) + 1
        review["added"].append({"added_id": number, **dict(zip(_ADDED_AXES, map(float, ras_mm))), **place,
                                **({"set_aside": set_aside} if set_aside else {}), "time": now()})

    return change_review(output_dir, record, rater, change)


def remove_added(output_dir: Path, record: dict, rater: str, added_id: int) -> dict:
    def change(review: dict) -> None:
        kept = [a for a in review["added"] if a["added_id"] != added_id]
        if len(kept) == len(review["added"]):
            raise ReviewError(f"{record['case_id']}: {rater} added no microbleed {added_id}")
        review["added"] = kept

    return change_review(output_dir, record, rater, change)


def set_note(output_dir: Path, record: dict, rater: str, note: str) -> dict:
    if not isinstance(note, str):
        raise ReviewError("a note is text")
    return change_review(output_dir, record, rater, lambda review: review.update(note=note))


def set_done(output_dir: Path, record: dict, rater: str, done: bool) -> dict:
    """Mark the case done (its review is then a result: reviewed_values) or not done again."""
    return change_review(output_dir, record, rater, lambda review: review.update(done=now() if done else None))


def start_again(output_dir: Path, record: dict, rater: str) -> None:
    """Move the rater's stale review to the case's superseded/ folder, so a new review can begin on
    the current mask; a current review stays."""
    check_rater(rater)
    path = Path(output_dir) / layout.review_path(record["case_id"], rater)
    with folder_lock(path.parent):
        try:
            review = checked(json.loads(path.read_text()), record["case_id"], rater)
        except FileNotFoundError:
            return
        except ValueError as exc:
            raise ReviewError(f"{path}: {exc}") from None
        if review["mask_sha256"] == mask_sha256(output_dir, record):
            return
        target = Path(output_dir) / layout.superseded_review_path(record["case_id"], rater, review["mask_sha256"])
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)


def locate_added(record: dict, ras_mm) -> dict:
    """The MARS region, category and hemisphere of an added microbleed, by the atlas placement the
    run recorded for the case; None each where there is none (--no-regions, no microbleed detected, a
    failed placement) or the atlas files are missing."""
    placement = (record.get("regions") or {}).get("placement")
    if not placement:
        return dict.fromkeys(_PLACE_COLUMNS)
    try:
        atlas = regions.load_atlas(regions.atlas_folder())
    except regions.AtlasError as exc:
        log.warning("%s: an added microbleed gets no region: %s", record["case_id"], exc)
        return dict.fromkeys(_PLACE_COLUMNS)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(placement["matrix"])
    transform.SetTranslation(placement["translation_mm"])
    transform.SetCenter(placement["centre_mm"])
    where = regions.locate(lps_of([ras_mm]), regions.AtlasPlacement(
        transform, placement["channel"], placement["mutual_information"], placement["volume_ratio"],
        placement["seconds"]), atlas)
    return {column: str(where[column].iloc[0]) for column in _PLACE_COLUMNS}


def lps_of(points_ras) -> np.ndarray:
    """RAS points (mm, one per row) in ITK's world (LPS), by the lesion table's own conversion."""
    return centroids_lps(pd.DataFrame(np.asarray(points_ras, float).reshape(-1, 3), columns=WORLD_COLUMNS))


def rater_values(table: pd.DataFrame, review: dict) -> dict:
    """RATER_COLUMNS of one review of the case's current mask (`table`: its lesion table)."""
    decisions = [review["detections"].get(str(int(i)), {}).get("decision") for i in table["lesion_id"]]
    accepted = [d == "accept" for d in decisions]
    kept = [*(table.loc[accepted, "region_category"] if "region_category" in table else [None] * sum(accepted)),
            *(a.get("region_category") for a in review["added"])]
    known = all(isinstance(c, str) and c in regions.CATEGORIES for c in kept)
    by_category = {c: sum(k == c for k in kept) if known else None for c in regions.CATEGORIES}
    return {"reviewed_accepted": sum(accepted), "reviewed_rejected": decisions.count("reject"),
            "reviewed_unsure": decisions.count("unsure"), "reviewed_undecided": decisions.count(None),
            "reviewed_added": len(review["added"]), "reviewed_count": len(kept),
            **{f"reviewed_count_{c}": n for c, n in by_category.items()},
            "reviewed_strictly_lobar": (bool(kept) and by_category["lobar"] == len(kept)) if known else None}


def reviewed_values(output_dir: Path, record: dict) -> dict:
    """REVIEW_COLUMNS for a case (see there): what its reviews say, for summary.csv and cohort.tsv.
    Never raises: a review folder that cannot be read counts as problems."""
    values = dict.fromkeys(REVIEW_COLUMNS) | {"review_status": "not reviewed", "stale_reviews": 0,
                                              "review_problems": 0}
    if not (Path(output_dir) / layout.review_dir(record["case_id"])).is_dir():
        return values
    try:
        reviews = read_reviews(output_dir, record)
        table = detections(output_dir, record) if reviews.current else None
    except (OSError, ValueError) as exc:
        log.warning("%s: its reviews could not be read: %s", record["case_id"], exc)
        return values | {"review_problems": 1}
    done = sorted((r for r in reviews.current.values() if r["done"]), key=lambda r: r["done"])
    status = "done" if done else "in progress" if reviews.current else "stale" if reviews.stale else "not reviewed"
    values |= {"review_status": status, "stale_reviews": len(reviews.stale), "review_problems": len(reviews.problems)}
    if done:
        values |= {"reviewed_by": " ".join(sorted(r["rater"] for r in done)), "review_rater": done[-1]["rater"],
                   "review_done": done[-1]["done"], **rater_values(table, done[-1])}
    return values


def _components(mask: np.ndarray, table: pd.DataFrame) -> tuple[np.ndarray, dict[int, int]]:
    """The mask's components and the component of each lesion of its table (by centroid: the
    table's voxel-index centroid is its component's)."""
    labels, count = label_microbleeds(mask)
    centres = np.array(ndimage.center_of_mass(mask > 0, labels, range(1, count + 1))).reshape(-1, 3)  # (z, y, x)
    found = {}
    for lesion_id, i, j, k in table[["lesion_id", "centroid_i", "centroid_j", "centroid_k"]].itertuples(index=False):
        distances = np.linalg.norm(centres - [k, j, i], axis=1) if count else np.array([np.inf])
        if distances.min() > 0.5:  # the table's centroids are written to 0.001 voxel
            raise ReviewError(f"lesion {lesion_id} of the table is no component of the mask: they do not belong together")
        found[int(lesion_id)] = int(distances.argmin()) + 1
    return labels, found


def write_reviewed_mask(output_dir: Path, record: dict, review: dict) -> Path:
    """The rater's reviewed mask (layout.reviewed_mask_path), uint8 0/1 on the mask's (the T2*) grid:
    the components of the detections they accepted, and per microbleed they added the voxels whose
    centres lie within ADDED_DIAMETER_MM / 2 of it (at least the voxel holding it). ReviewError for a
    stale review."""
    review = checked(review, record["case_id"], review.get("rater"))
    mask_file = output_path(output_dir, record, "mask")
    if review["mask_sha256"] != file_sha256(mask_file):
        raise ReviewError(f"{record['case_id']}: {review['rater']}'s review is of an earlier mask: not applied")
    image = sitk.ReadImage(str(mask_file))
    mask = sitk.GetArrayFromImage(image) > 0
    labels, component = _components(mask, detections(output_dir, record))
    accepted = [component[int(k)] for k, v in review["detections"].items() if v["decision"] == "accept"]
    reviewed = np.isin(labels, accepted)
    spacing_zyx = np.array(image.GetSpacing()[::-1])
    radius = ADDED_DIAMETER_MM / 2
    for point in lps_of([[a[k] for k in _ADDED_AXES] for a in review["added"]]):
        centre_zyx = np.array(image.TransformPhysicalPointToContinuousIndex(point.tolist())[::-1])
        reach = np.ceil(radius / spacing_zyx).astype(int) + 1
        low = np.maximum(np.floor(centre_zyx).astype(int) - reach, 0)
        high = np.minimum(np.ceil(centre_zyx).astype(int) + reach + 1, mask.shape)
        if np.any(high <= low):
            continue  # outside the grid: nothing of it on the mask
        box = tuple(slice(a, b) for a, b in zip(low, high))
        # distances in index steps times spacing are world distances: the direction matrix is a rotation
        offsets = np.ogrid[box]
        ball = sum(((o - c) * s) ** 2 for o, c, s in zip(offsets, centre_zyx, spacing_zyx)) <= radius ** 2
        reviewed[box] |= ball
        nearest = tuple(np.round(centre_zyx).astype(int))
        if all(0 <= n < size for n, size in zip(nearest, mask.shape)):
            reviewed[nearest] = True
    result = sitk.GetImageFromArray(reviewed.astype(np.uint8))
    result.CopyInformation(image)
    path = Path(output_dir) / layout.reviewed_mask_path(record["case_id"], review["rater"])
    write_image_atomic(result, path)
    return path
