"""BIDS: the cases of a raw BIDS dataset (names parsed by pybids), the derivatives dataset we write
(dataset_description.json, .bidsignore, a JSON sidecar per mask) and the group level's cohort table.

A case is one T2starw image (its acq-/run- entities stay in the case's name, so two runs are two
cases). For each other channel a model may read, the image of the same subject and session with that
suffix; of several, the one with the T2starw image's run, else the highest run (the last acquired),
and the log says which was taken. Which model a case gets, and so which of them it needs, the runner
decides from what is there (modelfolder.ModelChoice).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path

from . import __version__, layout, records
from .agreement import write_review_tables
from .cases import Case, InputFolderError, select_cases
from .files import atomic_output
from .report import write_cohort_tsv

log = logging.getLogger(__name__)

#: The specification's version our derivatives follow.
BIDS_VERSION = "1.10.1"
#: Set in the image (Dockerfile): the container's name for GeneratedBy.
IMAGE_VARIABLE = "MIXMICROBLEEDNET_IMAGE"


def is_bids_dataset(folder: Path) -> bool:
    try:
        return (Path(folder) / layout.DATASET_DESCRIPTION).is_file()
    except OSError:
        return False


def _anat_images(bids_dir: Path, participants: tuple[str, ...], suffixes: set[str]) -> list[tuple[Path, dict]]:
    """The anat images with these suffixes and their entities, of the chosen subjects only. The
    names are parsed by pybids' BIDS grammar; the folders are walked here, because indexing the
    whole dataset into pybids' database (BIDSLayout) took 8.5 s against 3.0 s on a 1,000-subject
    tree (benchmarks/bids_overhead.py) and an array task needs one subject."""
    from bids.layout import Config, parse_file_entities  # only BIDS runs pay for its import

    grammar = [Config.load("bids")]
    wanted = {p.removeprefix("sub-") for p in participants}
    subjects = sorted(p for p in bids_dir.glob("sub-*") if p.is_dir() and (not wanted or p.name[4:] in wanted))
    found = []
    for subject in subjects:
        for anat in [subject / "anat", *sorted(subject.glob("ses-*/anat"))]:
            for path in sorted(anat.glob("sub-*")) if anat.is_dir() else []:
                if not path.name.endswith(layout.BIDS_IMAGE_EXTENSIONS):
                    continue
                entities = parse_file_entities(str(path), config=grammar)
                if entities.get("suffix") in suffixes and entities.get("subject") == subject.name[4:]:
                    found.append((path, {name: (str(entities[name]) if name in entities else None)
                                         for name in (*layout.BIDS_CASE_ENTITIES, "suffix")}))
    return found


def _run_number(entities: dict) -> int:
    return int(entities["run"]) if entities.get("run") else -1


def _choose(candidates: list[tuple[Path, dict]], reference_entities: dict, channel: str, case_id: str) -> Path:
    """One image of a channel for a case (module docstring's rule); logged when there was a choice."""
    if len(candidates) == 1:
        return candidates[0][0]
    same_run = [path for path, entities in candidates
                if reference_entities.get("run") and entities["run"] == reference_entities["run"]]
    chosen = same_run[0] if len(same_run) == 1 else \
        max(candidates, key=lambda candidate: (_run_number(candidate[1]), candidate[0].name))[0]
    log.info("%s: %d %s images; took %s (%s)", case_id, len(candidates), layout.BIDS_SUFFIXES[channel], chosen.name,
             "the T2starw image's run" if len(same_run) == 1 else "the highest run")
    return chosen


def bids_cases(bids_dir: Path, channels: tuple[str, ...], participants: tuple[str, ...] = ()) -> list[Case]:
    """The cases of a BIDS dataset with the images of `channels` that each has, sorted; a subject
    or session with images but no T2starw one is a case that carries that problem. A missing T1w or
    T2w is the case's error only if the model chosen for it needs the image (imaging.read_channel)."""
    bids_dir = Path(bids_dir).resolve()
    if not is_bids_dataset(bids_dir):
        raise InputFolderError(f"{bids_dir}: not a BIDS dataset (no {layout.DATASET_DESCRIPTION})")
    suffix_channel = {layout.BIDS_SUFFIXES[c]: c for c in channels}
    by_visit: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for path, entities in _anat_images(bids_dir, participants, set(suffix_channel)):
        by_visit[(entities["subject"], entities["session"])][suffix_channel[entities["suffix"]]].append((path, entities))
    reference = layout.REFERENCE_CHANNEL
    cases = []
    for (subject, session), images in sorted(by_visit.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        for t2s_path, entities in images.get(reference) or [(None, {"subject": subject, "session": session})]:
            case_id = layout.bids_case_id(entities)
            anat = bids_dir / layout.bids_anat_dir(subject, session)
            paths = {}
            for channel in channels:
                chosen = t2s_path if channel == reference else \
                    (_choose(images[channel], entities, channel, case_id) if images.get(channel) else None)
                paths[channel] = chosen or anat / layout.bids_image_name(subject, session, channel)
            problem = None if t2s_path else \
                f"no {layout.BIDS_SUFFIXES[reference]} image ({paths[reference].relative_to(bids_dir)})"
            sources = {c: f"bids:raw:{paths[c].relative_to(bids_dir)}" for c in channels if paths[c].is_file()}
            headers = bids_dir / layout.dicom_headers_path(t2s_path.name) if t2s_path else None
            cases.append(Case(case_id, subject, session, paths, layout.bids_output_paths(entities), problem, sources,
                              dicom_headers=headers if headers and headers.is_file() else None))
    return sorted(cases, key=lambda c: c.case_id)


def write_derivatives_description(output_dir: Path, bids_dir: Path) -> None:
    """dataset_description.json and .bidsignore of the derivatives dataset (the same content from
    every array task: each writes it whole, atomically)."""
    generated_by = {"Name": "MixMicrobleedNet", "Version": __version__,
                    "Description": "Cerebral microbleed segmentation with nnU-Net v2 (T2starw, T1w, T2w)"}
    if os.environ.get(IMAGE_VARIABLE):
        generated_by["Container"] = {"Type": "docker", "Tag": os.environ[IMAGE_VARIABLE]}
    source = Path(bids_dir).resolve().as_uri()
    description = {"Name": "MixMicrobleedNet cerebral microbleeds", "BIDSVersion": BIDS_VERSION,
                   "DatasetType": "derivative", "GeneratedBy": [generated_by], "SourceDatasets": [{"URL": source}],
                   "DatasetLinks": {"raw": source}}
    with atomic_output(Path(output_dir) / layout.DATASET_DESCRIPTION) as temporary:
        temporary.write_text(json.dumps(description, indent=2) + "\n")
    with atomic_output(Path(output_dir) / layout.BIDSIGNORE) as temporary:
        temporary.write_text("\n".join(layout.BIDS_IGNORED) + "\n")


def sidecars(case: Case, settings) -> dict[str, dict]:
    """The JSON sidecars of the masks and the probability map (output kind -> content): what they
    are, on which image's grid (space-T2starw is no template, so SpatialReference is required),
    what they were made from and how."""
    common = {"Sources": [case.sources[c] for c in case.model.channels if c in case.sources],
              "SpatialReference": case.sources.get(layout.REFERENCE_CHANNEL, ""), "ModelSHA256": case.model.checksum,
              "ModelChannels": [layout.BIDS_SUFFIXES[c] for c in case.model.channels]}
    return {"mask_sidecar": {"Type": "Lesion", "Description": "Cerebral microbleeds (MixMicrobleedNet)", **common,
                             "Threshold": settings.threshold, "MinimumSizeMm3": settings.min_size_mm3,
                             "EdgeMarginMm": settings.margin_mm},
            "probability_sidecar": {"Description": "Cerebral microbleed probability (MixMicrobleedNet)", **common},
            "brain_mask_sidecar": {"Type": "Brain", "Sources": common["Sources"],
                                   "SpatialReference": common["SpatialReference"]}}


#: cohort.tsv's message for a case without a record: its task never ran it, or died before the record.
NO_RECORD = "no record in the output folder: not run, or its process ended before the case finished"


def group(bids_dir: Path, output_dir: Path, channels: tuple[str, ...], participants: tuple[str, ...] = (),
          sessions: tuple[str, ...] = ()) -> list[dict]:
    """The group level: one row per case of the dataset (and per record of a case no longer in it)
    from the records, written to cohort.tsv; a case without a record is `not run`."""
    cases = select_cases(bids_cases(bids_dir, channels, participants), participants, sessions)
    found = records.read_records(Path(output_dir))
    by_case = {r["case_id"]: r for r in found}
    rows = []
    for case in cases:
        record = by_case.pop(case.case_id, None)
        rows.append(records.summary_row(record, output_dir) if record else
                    {"subject": case.subject, "session": case.session, "case": case.case_id, "status": "not run",
                     "message": case.input_problem or NO_RECORD})
    if not participants and not sessions:
        rows += [records.summary_row(r, output_dir) for r in by_case.values()]
    write_derivatives_description(output_dir, bids_dir)
    write_cohort_tsv([records.cohort_row(r) for r in sorted(rows, key=lambda r: r["case"])], records.COHORT_COLUMNS,
                     Path(output_dir))
    write_review_tables(Path(output_dir), found)
    return rows
