"""DICOM in: the series of a folder (any structure, mixed series and studies), identified from their
tags by a rule table a site can extend (dicom_rules.toml), converted by dcm2niix into a BIDS dataset
that the BIDS layout then runs on.

Per series the converter keeps dcm2niix's BIDS sidecar (dates kept, names stripped: AcquisitionDateTime
orders visits) and the series' headers without pixels (layout.dicom_headers_path), from which pacs.py
makes a SEG that overlays the source series. Every series found, converted or not, is a row of
sourcedata/dicom_series.tsv saying why. A file that is not readable DICOM or a series dcm2niix cannot
convert is an error named in its own message, a series no rule identifies a warning (exports hold
many sequences no model reads); the others go on. A series already
converted is left as it is, so a killed conversion resumes.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import layout
from .files import atomic_output

log = logging.getLogger(__name__)

#: Files a DICOM walk never opens: ours and other tools' non-DICOM files.
_NOT_DICOM = (".nii", ".nii.gz", ".json", ".tsv", ".csv", ".txt", ".png", ".jpg", ".md", ".html", ".xml", ".zip")
#: dcm2niix converts with these: BIDS sidecar, personal data stripped but dates kept, gzip.
_DCM2NIIX_OPTIONS = ["-b", "y", "-ba", "o", "-z", "y"]
SERIES_COLUMNS = ["subject", "session", "series_number", "series_description", "image_type", "files", "use", "rule",
                  "why", "bids_image", "status", "message", "series_instance_uid", "folder"]


class DicomError(Exception):
    """One series (or file) cannot be used; the message names it and the problem."""


@dataclass
class Series:
    """One DICOM series as its first readable file describes it, and all its files."""

    uid: str
    tags: dict  # modality, description, protocol, image_type, sequence, echo_time_ms, patient_id, study...
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        t = self.tags
        return (f"series {t['series_number']} '{t['description']}' ({len(self.files)} files in "
                f"{os.path.commonpath([str(f.parent) for f in self.files])})")


@dataclass(frozen=True)
class Rule:
    name: str
    use: str  # a channel or "ignore"
    why: str
    acquisition: str | None = None
    modality: tuple[str, ...] = ()
    not_modality: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    image_type_any: tuple[str, ...] = ()
    description: str | None = None
    not_description: str | None = None
    sequence_any: tuple[str, ...] = ()
    echo_time_ms: tuple[float, float] | None = None

    def matches(self, tags: dict) -> bool:
        names = f"{tags['description']}\n{tags['protocol']}"
        image_type, sequence, echo = set(tags["image_type"]), set(tags["sequence"]), tags["echo_time_ms"]
        return ((not self.modality or tags["modality"] in self.modality)
                and (not self.not_modality or tags["modality"] not in self.not_modality)
                and set(self.image_type) <= image_type
                and (not self.image_type_any or bool(image_type & set(self.image_type_any)))
                and (self.description is None or re.search(self.description, names, re.IGNORECASE) is not None)
                and (self.not_description is None or re.search(self.not_description, names, re.IGNORECASE) is None)
                and (not self.sequence_any or bool(sequence & set(self.sequence_any)))
                and (self.echo_time_ms is None or (echo is not None and self.echo_time_ms[0] <= echo <= self.echo_time_ms[1])))


def read_rules(path: Path) -> list[Rule]:
    """A rule table (dicom_rules.toml's format); a wrong key, use or expression is named with its rule."""
    try:
        entries = tomllib.loads(Path(path).read_text())["rule"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise DicomError(f"{path}: not a rule table ({exc})") from None
    rules = []
    for entry in entries:
        name = entry.get("name", "?")
        try:
            values = {key: tuple(value) if isinstance(value, list) else value for key, value in entry.items()}
            rule = Rule(**values)
            for pattern in (rule.description, rule.not_description):
                if pattern is not None:
                    re.compile(pattern)
        except (TypeError, re.error) as exc:
            raise DicomError(f"{path}: rule {name!r}: {exc}") from None
        if rule.use != "ignore" and rule.use not in layout.CHANNELS:
            raise DicomError(f"{path}: rule {name!r}: use must be one of {', '.join(layout.CHANNELS)} or ignore")
        rules.append(rule)
    return rules


def rule_table(site_rules: Path | None = None) -> list[Rule]:
    """The site's rules (first) and the built-in ones."""
    built_in = read_rules(Path(__file__).with_name(layout.DICOM_RULES))
    return (read_rules(site_rules) if site_rules else []) + built_in


def identify(series: Series, rules: list[Rule]) -> Rule | None:
    return next((rule for rule in rules if rule.matches(series.tags)), None)


def _values(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v).strip().upper() for v in (value if isinstance(value, (list, tuple)) or
                                                   type(value).__name__ == "MultiValue" else [value]))


#: Enhanced MR's EchoPulseSequence as the ScanningSequence values the rules read.
_ECHO_PULSE = {"GRADIENT": ("GR",), "SPIN": ("SE",), "BOTH": ("SE", "GR")}


def _frame_value(dataset, sequence: str, keyword: str):
    """A multi-frame (enhanced) image's `keyword` in the functional group `sequence`: shared, or the first frame's."""
    for groups in (*(dataset.get("SharedFunctionalGroupsSequence") or [])[:1],
                   *(dataset.get("PerFrameFunctionalGroupsSequence") or [])[:1]):
        for item in (groups.get(sequence) or [])[:1]:
            return item.get(keyword)
    return None


def _tags(dataset) -> dict:
    """The identifying tags; of an enhanced MR image (no EchoTime, ScanningSequence), the echo time of its
    MREchoSequence and the sequence from EchoPulseSequence, InversionRecovery, EchoPlanarPulseSequence."""
    echo = dataset.get("EchoTime")
    if echo in (None, ""):
        echo = _frame_value(dataset, "MREchoSequence", "EffectiveEchoTime")
    sequence = _values(dataset.get("ScanningSequence")) or (
        _ECHO_PULSE.get(str(dataset.get("EchoPulseSequence", "")).upper(), ())
        + tuple(code for code, keyword in (("IR", "InversionRecovery"), ("EP", "EchoPlanarPulseSequence"))
                if str(dataset.get(keyword, "")).upper() == "YES"))
    return {"modality": str(dataset.get("Modality", "")), "description": str(dataset.get("SeriesDescription", "")),
            "protocol": str(dataset.get("ProtocolName", "")), "image_type": _values(dataset.get("ImageType")),
            "sequence": sequence,
            "echo_time_ms": float(echo) if echo not in (None, "") else None,
            "series_number": dataset.get("SeriesNumber", ""), "patient_id": str(dataset.get("PatientID", "")),
            "study_uid": str(dataset.get("StudyInstanceUID", "")), "study_date": str(dataset.get("StudyDate", "")),
            "study_time": str(dataset.get("StudyTime", ""))}


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _candidates(folder: Path):
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            if not name.lower().endswith(_NOT_DICOM) and name != "DICOMDIR" and not name.startswith("."):
                yield Path(root) / name


def looks_like_dicom_folder(folder: Path) -> bool:
    """A folder with DICOM files in it (the first few files looked at), and no NIfTI images."""
    looked = 0
    for path in _candidates(Path(folder)):
        if _is_dicom_file(path):
            return not any(Path(folder).rglob("*.nii*"))
        looked += 1
        if looked >= 50:
            return False
    return False


def find_series(folder: Path) -> tuple[list[Series], list[str]]:
    """The series under `folder`, by SeriesInstanceUID; and a message per file that is not readable
    DICOM (a file without the DICOM preamble is skipped silently: folders hold other files too)."""
    import pydicom

    series: dict[str, Series] = {}
    problems = []
    for path in _candidates(Path(folder)):
        if not _is_dicom_file(path):
            continue
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(dataset.SeriesInstanceUID)
        except Exception as exc:  # pydicom raises many kinds for a damaged file
            problems.append(f"{path}: not readable as DICOM ({type(exc).__name__}: {exc})")
            continue
        if "PixelData" not in dataset and "FloatPixelData" not in dataset and dataset.get("Rows") is None:
            continue  # not an image: a report, a presentation state
        series.setdefault(uid, Series(uid, _tags(dataset))).files.append(path)
    return sorted(series.values(), key=lambda s: (s.tags["patient_id"], s.tags["study_date"], s.tags["study_time"],
                                                   str(s.tags["series_number"]), s.uid)), problems


def _label(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", value)


def _sessions(series: list[Series]) -> dict[str, str]:
    """StudyInstanceUID -> session label: the study date, numbered when a subject has two studies that day."""
    studies: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for s in series:
        key = (s.tags["patient_id"], s.tags["study_date"])
        if (s.tags["study_time"], s.tags["study_uid"]) not in studies[key]:
            studies[key].append((s.tags["study_time"], s.tags["study_uid"]))
    labels = {}
    for (_, date), found in studies.items():
        for number, (_, uid) in enumerate(sorted(found), start=1):
            labels[uid] = (_label(date) or "nodate") + (f"n{number}" if number > 1 else "")
    return labels


def read_headers(path: Path) -> list:
    """A converted image's source headers (layout.dicom_headers_path), as pydicom datasets."""
    import pydicom

    with gzip.open(path, "rt") as handle:
        return [pydicom.Dataset.from_json(entry) for entry in json.load(handle)]


def _write_headers(files: list[Path], path: Path) -> None:
    import pydicom

    entries = [pydicom.dcmread(f, stop_before_pixels=True).to_json_dict(bulk_data_threshold=1 << 20) for f in files]
    with atomic_output(path) as temporary:
        with gzip.open(temporary, "wt") as handle:
            json.dump(entries, handle)


def convert_series(series: Series, image: Path, work: Path) -> None:
    """The series as one NIfTI image (and its sidecar beside it) by dcm2niix, moved into place when whole."""
    from dcm2niix import bin as dcm2niix

    with tempfile.TemporaryDirectory(dir=work, prefix=".dcm2niix-") as temporary:
        source, out = Path(temporary, "in"), Path(temporary, "out")
        source.mkdir()
        out.mkdir()
        for number, path in enumerate(series.files):  # only this series, whatever else its folder holds
            os.symlink(path.resolve(), source / f"{number:05d}.dcm")
        done = subprocess.run([dcm2niix, *_DCM2NIIX_OPTIONS, "-f", "image", "-o", str(out), str(source)],
                              capture_output=True, text=True)
        images = sorted(out.glob("*.nii.gz"))
        if done.returncode != 0 or len(images) != 1:
            said = " ".join(line.strip() for line in (done.stdout + done.stderr).splitlines()
                            if line.startswith(("Error", "Warning", "Unsupported")))[:500]
            made = f"{len(images)} images ({', '.join(p.name for p in images)})" if images else "no image"
            raise DicomError(f"{series.describe()}: dcm2niix made {made}, exit code {done.returncode}"
                             + (f": {said}" if said else ""))
        slices = _slices(images[0])
        if len(series.files) > 1 and slices != len(series.files):
            raise DicomError(f"{series.describe()}: dcm2niix stacked {slices} of its {len(series.files)} images "
                             "(repeated or missing slices?)")
        image.parent.mkdir(parents=True, exist_ok=True)
        sidecar = image.with_name(layout.sidecar_name(image.name))
        shutil.move(images[0].with_name(images[0].name.replace(".nii.gz", ".json")), sidecar)
        shutil.move(images[0], image)  # last: the image there says the series is converted


def _slices(image: Path) -> int:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image))
    reader.ReadImageInformation()
    size = reader.GetSize()
    return int(np.prod(size[2:])) if len(size) > 2 else 1


def dicom_to_bids(dicom_dir: Path, bids_dir: Path, site_rules: Path | None = None) -> pd.DataFrame:
    """Every series of `dicom_dir` identified and, when a model channel, converted into the BIDS
    dataset `bids_dir` (made or added to); the table of series (sourcedata/dicom_series.tsv)."""
    dicom_dir, bids_dir = Path(dicom_dir).resolve(), Path(bids_dir).resolve()
    rules = rule_table(site_rules)
    series, problems = find_series(dicom_dir)
    for problem in problems:
        log.warning("%s", problem)
    bids_dir.mkdir(parents=True, exist_ok=True)
    _write_dataset_files(bids_dir)
    sessions = _sessions(series)
    rows, names = [], defaultdict(list)
    for s in series:
        rule = identify(s, rules)
        subject, session = _label(s.tags["patient_id"]), sessions[s.tags["study_uid"]]
        row = {"subject": subject, "session": session, "series_number": str(s.tags["series_number"]),
               "series_description": s.tags["description"], "image_type": "\\".join(s.tags["image_type"]),
               "files": len(s.files), "use": rule.use if rule else "", "rule": rule.name if rule else "",
               "why": rule.why if rule else "", "bids_image": "", "status": "ignored", "message": "",
               "series_instance_uid": s.uid, "folder": os.path.relpath(os.path.commonpath([str(f.parent) for f in s.files]), dicom_dir)}
        rows.append(row)
        if rule is None:
            row.update(status="unidentified", message=f"{s.describe()}: no rule identifies it (ImageType "
                       f"{row['image_type']}, ScanningSequence {'/'.join(s.tags['sequence'])}, EchoTime "
                       f"{s.tags['echo_time_ms']} ms); add one to a site table (--dicom-rules)")
        elif rule.use != "ignore" and not subject:
            row.update(status="error", message=f"{s.describe()}: no PatientID, so no BIDS subject to put it under")
        elif rule.use != "ignore":
            names[(subject, session, rule.acquisition, rule.use)].append(row)
    for (subject, session, acquisition, channel), named in names.items():
        for run, row in enumerate(sorted(named, key=lambda r: (str(r["series_number"]), r["series_instance_uid"])), 1):
            entities = {"subject": subject, "session": session, "acquisition": acquisition,
                        "run": str(run) if len(named) > 1 else None}
            row["bids_image"] = f"{layout.bids_anat_dir(subject, session)}/{layout.bids_case_id(entities)}_" \
                                f"{layout.BIDS_SUFFIXES[channel]}{layout.NIFTI}"
    by_uid = {s.uid: s for s in series}
    for row in rows:
        if not row["bids_image"]:
            continue
        image = bids_dir / row["bids_image"]
        if image.is_file():
            row["status"] = "converted before"
            continue
        try:
            convert_series(by_uid[row["series_instance_uid"]], image, bids_dir)
            _write_headers(by_uid[row["series_instance_uid"]].files, bids_dir / layout.dicom_headers_path(image.name))
            row["status"] = "converted"
        except (DicomError, OSError) as exc:
            row.update(status="error", message=str(exc), bids_image="")
    for row in rows:
        if row["status"] in ("error", "unidentified"):
            log.log(logging.ERROR if row["status"] == "error" else logging.WARNING, "%s", row["message"])
    table = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    unreadable = pd.DataFrame([{"status": "error", "message": p, "files": 1} for p in problems], columns=SERIES_COLUMNS)
    table = pd.concat([table, unreadable], ignore_index=True) if problems else table
    with atomic_output(bids_dir / layout.DICOM_SERIES_TSV) as temporary:
        table.to_csv(temporary, sep="\t", index=False)
    _write_participants(bids_dir)
    counted = table["status"].value_counts()
    log.info("%d series in %s: %s (%s)", len(series), dicom_dir, ", ".join(f"{n} {status}" for status, n in counted.items()),
             bids_dir / layout.DICOM_SERIES_TSV)
    return table


def _write_dataset_files(bids_dir: Path) -> None:
    if not (bids_dir / layout.DATASET_DESCRIPTION).is_file():
        description = {"Name": "Converted from DICOM by MixMicrobleedNet (dcm2niix)", "BIDSVersion": "1.10.1",
                       "DatasetType": "raw"}
        with atomic_output(bids_dir / layout.DATASET_DESCRIPTION) as temporary:
            temporary.write_text(json.dumps(description, indent=2) + "\n")


def _write_participants(bids_dir: Path) -> None:
    subjects = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
    with atomic_output(bids_dir / layout.BIDS_PARTICIPANTS_TSV) as temporary:
        temporary.write_text("participant_id\n" + "".join(f"{s}\n" for s in subjects))
