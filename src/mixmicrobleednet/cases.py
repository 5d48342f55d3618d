"""Cases: one subject, the paths of its channels and of its outputs; found in an input folder.

Two input layouts, told apart with no flag: /input/inputs.json present → today's Grand-Challenge
interface (one case: an image per input socket); otherwise the seed's VALDO 2021 layout (every
`sub-*_space-*_desc-masked_T1.nii.gz` starts a case).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import layout


class CaseError(Exception):
    """A problem with one case's input: reported for that case, the others go on."""


class InputFolderError(Exception):
    """The input folder itself cannot be read: no case can run."""


@dataclass(frozen=True)
class Case:
    subject: str
    channel_paths: dict[str, Path]  # channel -> expected file (may not exist: checked on load)
    output_paths: dict[str, str]  # output kind (mask, lesions, qc, ...) -> path relative to the output folder
    input_problem: str | None = None  # found while discovering (platform layout); reported as the case's error

    @property
    def input_names(self) -> list[str]:
        return [self.channel_paths[c].name for c in layout.CHANNELS]


def uses_platform_interface(input_dir: Path) -> bool:
    try:
        return (Path(input_dir) / layout.PLATFORM_INPUTS_JSON).is_file()
    except OSError:  # an unreadable input folder: discovery reports it, in either layout
        return False


def discover_cases(input_dir: Path) -> list[Case]:
    """The cases in `input_dir`, in either layout."""
    input_dir = Path(input_dir)
    if uses_platform_interface(input_dir):
        return [platform_case(input_dir)]
    return seed_cases(input_dir)


def seed_cases(input_dir: Path) -> list[Case]:
    """Every `sub-*_space-*_desc-masked_T1.nii.gz` in `input_dir` starts a case (seed layout)."""
    try:
        names = sorted(input_dir.iterdir())
    except OSError as exc:
        raise InputFolderError(f"cannot read the input folder {input_dir}: {exc.strerror} "
                               f"(it must exist and be readable by user id {os.getuid()})") from None
    cases = []
    for path in names:
        parsed = layout.parse_input_name(path.name)
        if parsed is None or parsed["channel"] != layout.CASE_CHANNEL:
            continue
        paths = {c: input_dir / layout.input_name(parsed["subject"], c, parsed["space"]) for c in layout.CHANNELS}
        cases.append(Case(parsed["subject"], paths, layout.seed_output_paths(parsed["subject"])))
    return cases


def platform_case(input_dir: Path) -> Case:
    """The one case of a Grand-Challenge job: inputs.json names the sockets, each socket's folder
    under /input/images/<slug>/ holds one .mha or .tif image."""
    inputs_json = input_dir / layout.PLATFORM_INPUTS_JSON
    try:
        entries = json.loads(inputs_json.read_text())
        given = {entry["interface"]["slug"]: entry["interface"].get("relative_path") for entry in entries}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputFolderError(f"{inputs_json}: not a readable Grand-Challenge inputs.json "
                               f"(a list of socket values with interface.slug): {exc}") from None
    problems, paths = [], {}
    for channel, slug in layout.INPUT_SOCKETS.items():
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
    return Case(subject, paths, layout.platform_output_paths(), "; ".join(problems) or None)
