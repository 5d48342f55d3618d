"""Cases: one input of one subject (and session), the paths of its channels and of its outputs;
found in an input folder in one of two layouts.

The layout is told apart once, by the runner, with no flag: INPUT/inputs.json present → today's
Grand-Challenge interface (one case: an image per input socket); otherwise the seed's VALDO 2021
layout, where every set of files `sub-<id>[_ses-<id>][_acq-<l>][_run-<l>]_space-<space>_desc-masked_
<channel>.nii[.gz]` that shares everything before `_desc-` is one case. Its identity is that stem:
output names carry it, so two sessions or two spaces of one subject never share an output.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .modelfolder import ModelFolder


class CaseError(Exception):
    """A problem with one case's input: reported for that case, the others go on."""


class InputFolderError(Exception):
    """The input folder itself cannot be read: no case can run."""


@dataclass(frozen=True)
class Case:
    case_id: str  # seed layout: the stem shared by its files (sub-01_ses-2_space-T2S); platform: "job"
    subject: str
    session: str | None
    channel_paths: dict[str, Path]  # channel -> its file (an expected name when it is missing)
    output_paths: dict[str, str]  # output kind (mask, lesions, qc, record, ...) -> path relative to the output folder
    input_problem: str | None = None  # found while discovering; reported as the case's error
    sources: dict[str, str] = field(default_factory=dict)  # channel -> BIDS URI (bids:raw:sub-01/anat/...), for sidecars
    model: ModelFolder | None = None  # the model that predicts it (runner: ModelChoice.choose)
    dicom_headers: Path | None = None  # its T2* series' DICOM headers, when converted from DICOM (outputs for PACS)

    def inputs(self) -> list[Path]:
        """Its model's input files, in the model's channel order."""
        return [self.channel_paths[c] for c in self.model.channels]

    def given_channels(self) -> set[str]:
        """The channels whose file is there."""
        return {c for c, path in self.channel_paths.items() if path.is_file()}


def uses_platform_interface(input_dir: Path) -> bool:
    try:
        return (Path(input_dir) / layout.PLATFORM_INPUTS_JSON).is_file()
    except OSError:  # an unreadable input folder: discovery reports it, in either layout
        return False


def _list_folder(input_dir: Path) -> list[Path]:
    try:
        return sorted(input_dir.iterdir())
    except OSError as exc:
        raise InputFolderError(f"cannot read the input folder {input_dir}: {exc.strerror} "
                               f"(it must exist and be readable by user id {os.getuid()})") from None


def seed_cases(input_dir: Path) -> list[Case]:
    """One case per stem with any channel file in `input_dir` (seed layout), sorted by stem. A case
    without its T2* file, or with a channel given twice (.nii and .nii.gz), carries that problem."""
    found: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    parsed_stems = {}
    for path in _list_folder(input_dir):
        parsed = layout.parse_input_name(path.name)
        if parsed is not None:
            found[parsed["stem"]][parsed["channel"]].append(path)
            parsed_stems[parsed["stem"]] = parsed
    cases = []
    for stem in sorted(found):
        channels, entities = found[stem], parsed_stems[stem]
        problems = [f"{channel} given twice: {' and '.join(p.name for p in paths)} (keep one)"
                    for channel, paths in sorted(channels.items()) if len(paths) > 1]
        paths = {c: channels[c][0] if channels.get(c) else input_dir / layout.input_name(stem, c)
                 for c in layout.CHANNELS}
        cases.append(Case(stem, entities["subject"], entities["session"], paths, layout.seed_output_paths(stem),
                          "; ".join(problems) or None))
    return cases


def _platform_sockets(input_dir: Path) -> dict[str, str | None]:
    """inputs.json's sockets: slug -> the folder the platform gave it (relative to /input)."""
    inputs_json = input_dir / layout.PLATFORM_INPUTS_JSON
    try:
        entries = json.loads(inputs_json.read_text())
        return {entry["interface"]["slug"]: entry["interface"].get("relative_path") for entry in entries}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputFolderError(f"{inputs_json}: not a readable Grand-Challenge inputs.json "
                               f"(a list of socket values with interface.slug): {exc}") from None


def platform_channels(input_dir: Path) -> set[str]:
    """The channels a Grand-Challenge job offers: those whose socket inputs.json names. A named
    socket without its image is a broken job (an error), not a job without that channel."""
    given = _platform_sockets(input_dir)
    return {channel for channel, slug in layout.INPUT_SOCKETS.items() if slug in given}


def platform_case(input_dir: Path, channels: tuple[str, ...]) -> Case:
    """The one case of a Grand-Challenge job: inputs.json names the sockets, each socket's folder
    under /input/images/<slug>/ holds one .mha or .tif image. Only the sockets of `channels` (the
    model's) are needed."""
    given = _platform_sockets(input_dir)
    problems, paths = [], {}
    for channel in channels:
        slug = layout.INPUT_SOCKETS[channel]
        relative = given.get(slug) or layout.platform_image_dir(slug)
        folder = input_dir / relative
        if slug not in given:
            problems.append(f"inputs.json names no socket {slug!r} (the {channel} image)")
        images = sorted(p for p in folder.glob("*") if p.name.lower().endswith(layout.PLATFORM_IMAGE_SUFFIXES)) \
            if folder.is_dir() else []
        if slug in given and len(images) != 1:
            problems.append(f"{relative.rstrip('/')}/: {len(images)} .mha/.tif files for socket {slug!r}, "
                            f"expected exactly 1")
        paths[channel] = images[0] if len(images) == 1 else folder / f"<{slug}>"
    subject = paths[layout.REFERENCE_CHANNEL].name.split(".")[0]
    return Case("job", subject, None, paths, layout.platform_output_paths(), "; ".join(problems) or None)


def select_cases(cases: list[Case], participants: tuple[str, ...] = (), sessions: tuple[str, ...] = (),
                 shard: tuple[int, int] | None = None) -> list[Case]:
    """The cases of the given participant and session labels (with or without sub-/ses-; all when
    none are given), then shard K of N (1-based): every N-th case of the sorted list from the K-th
    on, the same on every machine, so N processes together take each case exactly once."""
    wanted_subjects = {p.removeprefix("sub-") for p in participants}
    wanted_sessions = {s.removeprefix("ses-") for s in sessions}
    chosen = sorted((c for c in cases if (not wanted_subjects or c.subject in wanted_subjects)
                     and (not wanted_sessions or c.session in wanted_sessions)), key=lambda c: c.case_id)
    if shard:
        index, count = shard
        chosen = chosen[index - 1::count]
    return chosen


def has_series(cases: list[Case]) -> bool:
    """Whether two or more of these cases are sessions of one series: then a run is to save the
    probability maps that the comparison reads."""
    return any(n >= 2 for n in Counter(layout.without_session(c.case_id, c.session) for c in cases if c.session).values())
