"""A record per case, and the reports merged from the records in an output folder.

A case's record (OUTPUT/records/<case>_record.json) is written atomically after its last output:
a case with a record is finished. It holds what the case was computed from (its inputs' sizes and
modification times, the model's checksum, the settings) and what came out (outputs, counts, errors,
device, versions, stage timings). results.json and summary.csv are rebuilt from all the records in
the folder, under a lock, so any number of processes (shards, array tasks) can share one output
folder; `mixmicrobleednet merge OUTPUT` rebuilds them at any time.
"""

from __future__ import annotations

import functools
import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import NotRequired, TypedDict

from . import layout
from .cases import Case
from .decisions import REVIEW_COLUMNS, reviewed_values
from .files import atomic_output, folder_lock, remove_partials
from .regions import CATEGORY_COLUMNS, SUMMARY_COLUMNS as REGION_SUMMARY_COLUMNS, summary_values
from .agreement import write_review_tables
from .report import write_results_json, write_summary_csv

log = logging.getLogger(__name__)

RECORD_VERSION = 1
_VERSIONED = ("mixmicrobleednet", "nnunetv2", "torch", "numpy", "SimpleITK")


class CaseRecord(TypedDict):
    """A case's record, OUTPUT/records/<case>_record.json: the one schema that pipeline.py writes
    and --resume, merge (summary.csv, results.json), the BIDS group level (cohort.tsv), longitudinal
    and review read. JSON values only."""

    record_version: NotRequired[int]  # added by write_record
    case_id: str
    subject: str
    session: str | None
    status: str  # "ok" or "error"
    error_messages: list[str]
    inputs: list[dict]  # input_fingerprint: what --resume compares
    model: dict  # name, path, sha256, channels
    settings: dict  # the run's settings (pipeline.CaseRun.settings_record): what --resume compares
    registrations: dict[str, dict]  # channel -> its registration onto the T2* (registration.Registration.as_record)
    brain_mask: dict  # how the brain mask was found (brain.BrainMask.as_record)
    edge_rule: dict  # edge_margin_mm, and near_edge: what the rule set aside (RAS centroid, volume, probability)
    # the model's mimic check: cut (None: the model has none), and mimics: what it set aside (as near_edge,
    # with the calibrated probability); absent from records written before the check
    mimic_check: NotRequired[dict]
    regions: dict | None  # the atlas placement and the counts (regions.locate_lesions); None with --no-regions
    outputs: dict[str, str]  # kind -> path relative to the output folder
    network: dict  # preprocessed_ahead, and the sliding window's tiles, passes_per_tile and tiles_rechecked
    # (openvino-checked's float32 reruns; absent from records written before it; empty: not measured)
    microbleed_count: int | None
    total_volume_mm3: float | None
    device: str
    versions: dict[str, str]
    host: str
    stage_seconds: dict[str, float]
    runtime_s: float
    finished: str  # UTC, ISO 8601


#: summary.csv's columns (summary_row): the seed's first; later ones only ever added at the end.
SUMMARY_COLUMNS = ["subject", "status", "message", "microbleed_count", "total_volume_mm3", "runtime_s", "session",
                   "case", "model", "model_sha256", *REGION_SUMMARY_COLUMNS, "edge_margin_mm", "near_edge_count",
                   *REVIEW_COLUMNS, "mimic_count"]
#: cohort.tsv's columns (the BIDS group level): summary_row's in BIDS's words, MARS categories only.
COHORT_COLUMNS = ["participant_id", "session_id", "case", "status", "microbleed_count", "total_volume_mm3", "message",
                  "runtime_s", "model", "model_sha256", *CATEGORY_COLUMNS, "edge_margin_mm", "near_edge_count",
                  *REVIEW_COLUMNS, "mimic_count"]


@functools.cache
def versions() -> dict[str, str]:
    """The package's and its main libraries' versions, without importing them (read once)."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def input_fingerprint(case: Case) -> list[dict]:
    """Each of its model's input files' name, size and modification time: what resuming compares."""
    entries = []
    for channel, path in zip(case.model.channels, case.inputs()):
        try:
            status = path.stat()
            entries.append({"channel": channel, "file": path.name, "size": status.st_size,
                            "mtime_ns": status.st_mtime_ns})
        except OSError:
            entries.append({"channel": channel, "file": path.name, "size": None, "mtime_ns": None})
    return entries


def record_path(output_dir: Path, case: Case) -> Path:
    return output_dir / case.output_paths["record"]


def read_record(path: Path) -> CaseRecord | None:
    """A record, or None when there is none or it cannot be read (then the case runs again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("record_version") == RECORD_VERSION else None


def finished_before(record: CaseRecord | None, fingerprint: list[dict], model_sha256: str, settings: dict,
                    output_dir: Path) -> str | None:
    """Why a case need not run again (its record matches and its outputs exist), or None."""
    if record is None or record.get("status") != "ok":
        return None
    same = (record.get("inputs") == fingerprint and record.get("model", {}).get("sha256") == model_sha256
            and record.get("settings") == settings)
    if not same or not all((output_dir / p).is_file() for p in record.get("outputs", {}).values()):
        return None
    return f"finished at {record.get('finished', '?')} with the same inputs, model and settings"


def write_record(output_dir: Path, case: Case, record: CaseRecord) -> None:
    path = record_path(output_dir, case)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps({"record_version": RECORD_VERSION, **record}, indent=2))


def read_records(output_dir: Path) -> list[CaseRecord]:
    records_dir = output_dir / layout.RECORDS_DIR
    paths = sorted(records_dir.glob(layout.record_name("*"))) if records_dir.is_dir() else []
    records = []
    for path in paths:
        record = read_record(path)
        if record is None:
            log.warning("%s: not a readable record, left out of the reports", path)
        else:
            records.append(record)
    return sorted(records, key=lambda r: r["case_id"])


def results_entry(record: CaseRecord) -> dict:
    """The entry the seed's evalutils processor wrote to results.json."""
    images = [path for kind, path in record.get("outputs", {}).items() if kind in ("mask", "probability")]
    return {"outputs": [{"type": "metaio_image", "filename": images}],
            "inputs": [{"type": "metaio_image", "filename": [i["file"] for i in record["inputs"]]}],
            "error_messages": record["error_messages"]}


def summary_row(record: CaseRecord, output_dir: Path) -> dict:
    """The case's summary.csv row (SUMMARY_COLUMNS), its raters' reviews in `output_dir` included."""
    return {"subject": record["subject"], "status": record["status"], "message": "; ".join(record["error_messages"]),
            "microbleed_count": record.get("microbleed_count"), "total_volume_mm3": record.get("total_volume_mm3"),
            "runtime_s": record.get("runtime_s"), "session": record.get("session"), "case": record["case_id"],
            "model": record.get("model", {}).get("name", ""),
            "model_sha256": record.get("model", {}).get("sha256", "")[:12], **summary_values(record.get("regions")),
            **edge_values(record.get("edge_rule")), **reviewed_values(output_dir, record),
            "mimic_count": mimic_count(record.get("mimic_check"))}


def cohort_row(row: dict) -> dict:
    """A summary row (summary_row, or bids.group's for a case not run) in cohort.tsv's words."""
    session = row.get("session")
    return {**row, "participant_id": f"sub-{row['subject']}",
            "session_id": f"ses-{session}" if isinstance(session, str) and session else None}


def edge_values(edge_rule: dict | None) -> dict:
    """The edge margin a case was drawn with and how many components it set aside (none recorded: a
    failed case, or a record from before the rule was recorded)."""
    if not edge_rule:
        return {"edge_margin_mm": None, "near_edge_count": None}
    return {"edge_margin_mm": edge_rule["edge_margin_mm"], "near_edge_count": len(edge_rule["near_edge"])}


def mimic_count(mimic_check: dict | None) -> int | None:
    """How many components the model's mimic check set aside (None: a failed case, a model without a
    check, or a record from before the check)."""
    return len(mimic_check["mimics"]) if mimic_check and mimic_check["cut"] is not None else None


def merge(output_dir: Path) -> list[CaseRecord]:
    """Rebuild results.json and summary.csv from every record in `output_dir`; returns the records."""
    output_dir = Path(output_dir)
    with folder_lock(output_dir / layout.RECORDS_DIR):  # one merge at a time per output folder
        records = read_records(output_dir)
        for report in (layout.RESULTS_JSON, layout.SUMMARY_CSV):
            remove_partials(output_dir / report)  # left by a merge that was killed
        write_results_json([results_entry(r) for r in records], output_dir)
        write_summary_csv([summary_row(r, output_dir) for r in records], SUMMARY_COLUMNS, output_dir)
        write_review_tables(output_dir, records)
    return records
