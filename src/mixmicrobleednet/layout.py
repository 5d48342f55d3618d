"""The one registry of names: channels, file patterns, output names and Grand-Challenge sockets.

Everything that spells a file name asks this module, so the input contracts (the VALDO 2021 /
seed layout, and today's Grand-Challenge interface with /input/inputs.json) and the output
contracts cannot drift apart between modules.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

#: Input channels in the order the network sees them (nnU-Net channel 0, 1, 2).
CHANNELS: tuple[str, ...] = ("T1", "T2", "T2S")
#: The channel whose grid every other channel and every output lives on.
REFERENCE_CHANNEL = "T2S"
#: The channel whose file starts a case (as in the seed: "every T1 file starts a case").
CASE_CHANNEL = "T1"

NIFTI = ".nii.gz"
_INPUT_RE = re.compile(
    r"^sub-(?P<subject>[A-Za-z0-9]+)_space-(?P<space>[A-Za-z0-9]+)_desc-masked_(?P<channel>T1|T2|T2S)\.nii\.gz$"
)


def parse_input_name(name: str) -> dict[str, str] | None:
    """Subject, space and channel of an input file name, or None when it is not one."""
    match = _INPUT_RE.match(name)
    return match.groupdict() if match else None


def input_name(subject: str, channel: str, space: str = REFERENCE_CHANNEL) -> str:
    return f"sub-{subject}_space-{space}_desc-masked_{channel}{NIFTI}"


def label_name(subject: str) -> str:
    """Reference microbleed mask of a training or phantom case (VALDO naming)."""
    return f"sub-{subject}_space-{REFERENCE_CHANNEL}_CMB{NIFTI}"


def parse_label_name(name: str) -> str | None:
    match = re.match(rf"^sub-([A-Za-z0-9]+)_space-{REFERENCE_CHANNEL}_CMB\.nii\.gz$", name)
    return match.group(1) if match else None


IMAGES_DIR = "images"
RESULTS_JSON = "results.json"
SUMMARY_CSV = "summary.csv"


def prediction_name(subject: str) -> str:
    return f"sub-{subject}_space-{REFERENCE_CHANNEL}_prediction{NIFTI}"


def case_output_path(output_dir: Path, subject: str, kind: str) -> Path:
    """The per-case outputs beside the mask: `lesions` (.csv), `probability` (.nii.gz), `qc` (.png)."""
    extension = {"lesions": ".csv", "probability": NIFTI, "qc": ".png"}[kind]
    return output_dir / IMAGES_DIR / f"sub-{subject}_space-{REFERENCE_CHANNEL}_{kind}{extension}"


def parse_prediction_name(name: str) -> str | None:
    match = re.match(rf"^sub-([A-Za-z0-9]+)_space-{REFERENCE_CHANNEL}_prediction\.nii\.gz$", name)
    return match.group(1) if match else None


def prediction_path(output_dir: Path, subject: str) -> Path:
    return output_dir / IMAGES_DIR / prediction_name(subject)


# Grand-Challenge algorithm interface (the platform's layout since 2024; grand-challenge-forge 0.7.5).
PLATFORM_INPUTS_JSON = "inputs.json"
PLATFORM_IMAGE_SUFFIXES = (".mha", ".tif", ".tiff")
PLATFORM_MASK_FILE = "output.mha"
_SOCKETS = tomllib.loads((Path(__file__).with_name("sockets.toml")).read_text())
#: channel -> input socket slug, and output kind (mask, count, total_volume) -> output socket slug.
INPUT_SOCKETS: dict[str, str] = {channel: _SOCKETS["inputs"][channel] for channel in CHANNELS}
OUTPUT_SOCKETS: dict[str, str] = dict(_SOCKETS["outputs"])


def platform_image_dir(slug: str) -> str:
    """Where the platform puts an image socket's file, relative to /input or /output."""
    return f"{IMAGES_DIR}/{slug}"


def platform_output_paths() -> dict[str, str]:
    """Output kind -> path relative to /output, in the platform's layout."""
    return {"mask": f"{platform_image_dir(OUTPUT_SOCKETS['mask'])}/{PLATFORM_MASK_FILE}",
            "count": f"{OUTPUT_SOCKETS['count']}.json", "total_volume": f"{OUTPUT_SOCKETS['total_volume']}.json"}


def seed_output_paths(subject: str) -> dict[str, str]:
    """Output kind -> path relative to the output folder, in the seed's layout."""
    paths = {"mask": f"{IMAGES_DIR}/{prediction_name(subject)}"}
    paths.update({kind: str(case_output_path(Path(), subject, kind)) for kind in ("lesions", "probability", "qc")})
    return paths
