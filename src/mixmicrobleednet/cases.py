"""Cases: one subject and the paths of its channels; found in an input folder."""

from __future__ import annotations

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

    @property
    def input_names(self) -> list[str]:
        return [self.channel_paths[c].name for c in layout.CHANNELS]


def discover_cases(input_dir: Path) -> list[Case]:
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
        cases.append(Case(parsed["subject"], paths))
    return cases
