"""The one registry of names: channels, file patterns, output names and Grand-Challenge sockets.

Everything that spells a file name asks this module, so the input contracts (the VALDO 2021 /
seed layout, and today's Grand-Challenge interface with /input/inputs.json) and the output
contracts cannot drift apart between modules.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

#: Every channel the tool knows, in the seed model's network order. A model folder declares which
#: of them it needs, in its own order (dataset.json's channel_names; modelfolder.py).
CHANNELS: tuple[str, ...] = ("T1", "T2", "T2S")
#: The channel whose grid every other channel and every output lives on; every model needs it.
REFERENCE_CHANNEL = "T2S"
#: The channel brain extraction runs on when the model reads it (deepbet was trained on T1 scans);
#: without it, the reference channel.
BRAIN_EXTRACTION_CHANNEL = "T1"
#: The channel the atlas template (a T1) is registered to for microbleed regions; without it, the reference.
ATLAS_CHANNEL = "T1"

NIFTI = ".nii.gz"

#: The MNI atlases microbleed regions are found with (regions.py): Debian's mricron-data installs them
#: here; the image carries copies made at build time and points the variable at them.
ATLAS_DIR = "/usr/share/mricron/templates"
ATLAS_DIR_VARIABLE = "MIXMICROBLEEDNET_ATLAS_DIR"
ATLAS_FILES: dict[str, str] = {"template": "ch2bet.nii.gz", "cortex_and_nuclei": "aal.nii.gz",
                               "white_matter": "JHU-WhiteMatter-labels-1mm.nii.gz"}
#: The entities that tell two inputs apart, in the order they stand in a name (BIDS order).
_STEM = r"sub-(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?(?:_acq-(?P<acquisition>[A-Za-z0-9]+))?" \
        r"(?:_run-(?P<run>[A-Za-z0-9]+))?_space-(?P<space>[A-Za-z0-9]+)"
_INPUT_RE = re.compile(rf"^(?P<stem>{_STEM})_desc-masked_(?P<channel>{'|'.join(CHANNELS)})(?P<extension>\.nii(?:\.gz)?)$")
_LABEL_RE = re.compile(rf"^(?P<stem>{_STEM})_CMB\.nii\.gz$")


def case_stem(subject: str, session: str | None = None, space: str = REFERENCE_CHANNEL) -> str:
    """The name every file of one case starts with: sub-<id>[_ses-<id>]_space-<space>."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "") + f"_space-{space}"


def parse_input_name(name: str) -> dict[str, str] | None:
    """stem, subject, session, acquisition, run, space, channel and extension of an input file
    name (seed layout), or None when it is not one."""
    match = _INPUT_RE.match(name)
    return match.groupdict() if match else None


def parse_stem(stem: str) -> dict[str, str | None]:
    match = re.fullmatch(_STEM, stem)
    if match is None:
        raise ValueError(f"not a case name: {stem!r}")
    return match.groupdict()


def input_name(stem: str, channel: str, extension: str = NIFTI) -> str:
    return f"{stem}_desc-masked_{channel}{extension}"


def brain_mask_name(case_id: str) -> str:
    """A case's brain mask in a --brain-mask folder: the name a seed-layout run writes it under."""
    return case_id + _OUTPUT_SUFFIXES["brain_mask"]


def label_name(stem: str) -> str:
    """Reference microbleed mask of a training or phantom case (VALDO naming)."""
    return f"{stem}_CMB{NIFTI}"


#: A phantom's mimic map (phantoms.py writes it beside the label): which mimic each voxel of the T2*
#: grid shows, so that evaluation can say on what the false positives sit.
MIMIC_LABELS: dict[int, str] = {1: "vein", 2: "pallidal_iron", 3: "dentate", 4: "deep_iron", 5: "air_artefact"}


def mimic_map_name(stem: str) -> str:
    return f"{stem}_mimics{NIFTI}"


def parse_label_name(name: str) -> str | None:
    """The case stem of a label file name, or None."""
    match = _LABEL_RE.match(name)
    return match.group("stem") if match else None


# A model folder (nnU-Net v2's results layout, fold `all` only; modelfolder.py reads and writes it).
PLANS_JSON = "plans.json"
DATASET_JSON = "dataset.json"
MODEL_CARD = "MODEL_CARD.md"
FOLD = "all"
CHECKPOINT_NAME = "checkpoint_final.pth"
CHECKPOINT = f"fold_{FOLD}/{CHECKPOINT_NAME}"

IMAGES_DIR = "images"
RECORDS_DIR = "records"
RESULTS_JSON = "results.json"
SUMMARY_CSV = "summary.csv"


#: A case's outputs in the seed layout: its stem plus one of these.
_OUTPUT_SUFFIXES = {"mask": f"_prediction{NIFTI}", "lesions": "_lesions.csv", "probability": f"_probability{NIFTI}",
                    "qc": "_qc.png", "preprocessing_qc": "_preprocessing_qc.png", "brain_mask": f"_brainmask{NIFTI}"}


def prediction_name(stem: str) -> str:
    return stem + _OUTPUT_SUFFIXES["mask"]


def parse_output_name(name: str, kind: str) -> str | None:
    """The case stem of a seed-layout output file name of this kind (mask, probability, ...), or None."""
    match = re.fullmatch(rf"(?P<stem>{_STEM}){re.escape(_OUTPUT_SUFFIXES[kind])}", name)
    return match.group("stem") if match else None


def parse_prediction_name(name: str) -> str | None:
    """The case stem of a mask file name, or None."""
    return parse_output_name(name, "mask")


def prediction_path(output_dir: Path, stem: str) -> Path:
    return output_dir / IMAGES_DIR / prediction_name(stem)


def record_name(case_id: str) -> str:
    """The record of a case: written last, it says the case is finished (records.py)."""
    return f"{case_id}_record.json"


# Grand-Challenge algorithm interface (the platform's layout since 2024; grand-challenge-forge 0.7.5).
PLATFORM_INPUTS_JSON = "inputs.json"
PLATFORM_IMAGE_SUFFIXES = (".mha", ".tif", ".tiff")
PLATFORM_MASK_FILE = "output.mha"
_SOCKETS = tomllib.loads((Path(__file__).with_name("sockets.toml")).read_text())
#: channel -> input socket slug, and output kind (mask, count, total_volume) -> output socket slug.
INPUT_SOCKETS: dict[str, str] = {channel: _SOCKETS["inputs"][channel] for channel in CHANNELS}
OUTPUT_SOCKETS: dict[str, str] = dict(_SOCKETS["outputs"])


# Two or more sessions of a subject compared (longitudinal.py), in any layout's output folder.
LONGITUDINAL_TSV = "longitudinal.tsv"  # a row per follow-up
LONGITUDINAL_MICROBLEEDS_TSV = "longitudinal_microbleeds.tsv"  # a row per microbleed of a baseline/follow-up pair
LONGITUDINAL_DIR = "longitudinal"  # per follow-up: its QC picture and record


def longitudinal_paths(follow_up_case_id: str) -> dict[str, str]:
    """A follow-up's outputs of the comparison with its baseline, relative to the output folder."""
    return {"qc": f"{LONGITUDINAL_DIR}/{follow_up_case_id}_longitudinal_qc.png",
            "record": f"{LONGITUDINAL_DIR}/{follow_up_case_id}_longitudinal.json"}


def without_session(case_id: str, session: str) -> str:
    """A case's name without its session: what one subject's sessions of the same series share."""
    return case_id.replace(f"_{_BIDS_PREFIXES['session']}-{session}", "", 1)


def sidecar_name(image_name: str) -> str:
    """An image's JSON sidecar (BIDS: the same name with .json; AcquisitionDateTime and the like)."""
    for extension in (NIFTI, ".nii", *PLATFORM_IMAGE_SUFFIXES):
        if image_name.endswith(extension):
            return image_name[: -len(extension)] + ".json"
    return image_name + ".json"


# A reader's review of a case's outputs (review/): everything of it in the case's folder under reviews/,
# beside the tool's outputs, which a review never changes.
REVIEWS_DIR = "reviews"
#: A rater's name is part of file names: letters, digits, '.', '_' and '-', starting with a letter or digit.
RATER_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_REVIEW_SUFFIX = ".json"
_REVIEWED_MASK_RE = re.compile(rf"^(?P<case>.+)_rater-(?P<rater>{RATER_PATTERN})_desc-reviewed_mask{re.escape(NIFTI)}$")
SUPERSEDED_REVIEWS_DIR = "superseded"  # in a case's review folder: reviews of a mask that has changed since


def review_dir(case_id: str) -> str:
    """A case's review folder, relative to the output folder."""
    return f"{REVIEWS_DIR}/{case_id}"


def review_path(case_id: str, rater: str) -> str:
    """One rater's decisions on one case (review/decisions.py), relative to the output folder."""
    return f"{review_dir(case_id)}/{rater}{_REVIEW_SUFFIX}"


def parse_review_name(name: str) -> str | None:
    """The rater of a review file name, or None when it is not one."""
    match = re.fullmatch(rf"(?P<rater>{RATER_PATTERN}){re.escape(_REVIEW_SUFFIX)}", name)
    return match.group("rater") if match else None


def superseded_review_path(case_id: str, rater: str, mask_sha256: str) -> str:
    """Where a rater's review of an earlier mask goes when they start again on the current one."""
    return f"{review_dir(case_id)}/{SUPERSEDED_REVIEWS_DIR}/{rater}_mask-{mask_sha256[:12]}{_REVIEW_SUFFIX}"


def reviewed_mask_path(case_id: str, rater: str) -> str:
    """A rater's reviewed mask (accepted microbleeds and those they added), on the T2* grid."""
    return f"{review_dir(case_id)}/{case_id}_rater-{rater}_desc-reviewed_mask{NIFTI}"


def is_reviewed_mask_name(name: str) -> bool:
    return _REVIEWED_MASK_RE.match(name) is not None


#: merge and the BIDS group level, when a case has reviews: one row per case and rater (their current
#: reviews), and the raters' agreement (kappa per detection, ICC of the counts) when two finished a case.
REVIEW_RATERS_TSV = f"{REVIEWS_DIR}/raters.tsv"
REVIEW_AGREEMENT_JSON = f"{REVIEWS_DIR}/agreement.json"


def review_report_path(case_id: str) -> str:
    """`review --export`'s self-contained HTML page of a case's reviews."""
    return f"{review_dir(case_id)}/{case_id}_review.html"


# DICOM: series identified by a rule table and converted into a BIDS dataset (dicom.py); for a case
# whose T2* scan came from DICOM, outputs for PACS beside the NIfTI ones (pacs.py).
DICOM_RULES = "dicom_rules.toml"  # the built-in rule table, package data beside this module
#: In a BIDS dataset made from DICOM: every series found, how it was identified and where it went.
DICOM_SERIES_TSV = "sourcedata/dicom_series.tsv"
#: In a BIDS dataset made from DICOM: the source series' headers (no pixels) of each converted image,
#: so that a SEG can reference the series it was made on without the DICOM folder.
DICOM_HEADERS_DIR = "sourcedata/dicom_headers"
#: `predict -i DICOM_FOLDER`: the BIDS dataset the series are converted into, inside the output folder.
DICOM_CONVERTED_DIR = "sourcedata/bids"
DICOM_OUTPUTS_DIR = "dicom"
_DICOM_OUTPUT_SUFFIXES = {"dicom_seg": "_desc-CMB_seg.dcm", "dicom_sr": "_desc-CMB_sr.dcm", "dicom_qc": "_desc-CMB_qc.dcm"}


def dicom_headers_path(image_name: str) -> str:
    """Where a converted image's source headers are kept, relative to the BIDS dataset."""
    stem = image_name.removesuffix(NIFTI).removesuffix(".nii")
    return f"{DICOM_HEADERS_DIR}/{stem}_dicom.json.gz"


# BIDS (bids.py): raw dataset in, derivatives dataset out.
DATASET_DESCRIPTION = "dataset_description.json"
BIDSIGNORE = ".bidsignore"
#: channel -> the BIDS suffix of its anat/ image (SWI magnitude exported as T2*-weighted is T2starw too).
BIDS_SUFFIXES: dict[str, str] = {"T1": "T1w", "T2": "T2w", "T2S": "T2starw"}
BIDS_IMAGE_EXTENSIONS = (".nii.gz", ".nii")
#: The entities a case keeps from its T2starw image, in BIDS order.
BIDS_CASE_ENTITIES = ("subject", "session", "acquisition", "run")
_BIDS_PREFIXES = {"subject": "sub", "session": "ses", "acquisition": "acq", "run": "run"}
BIDS_COHORT_TSV = "cohort.tsv"
BIDS_PARTICIPANTS_TSV = "participants.tsv"
BIDS_FIGURES_DIR = "figures"
BIDS_LOGS_DIR = "logs"  # slurm/submit.sh's job logs
#: What the BIDS specification does not cover in our derivatives (.bidsignore).
BIDS_IGNORED = (f"/{RECORDS_DIR}", f"/{DICOM_OUTPUTS_DIR}", f"/{BIDS_FIGURES_DIR}", f"/{BIDS_LOGS_DIR}", f"/{BIDS_COHORT_TSV}", "*_lesions.tsv",  # the validator misses "dir/"
                f"/{LONGITUDINAL_TSV}", f"/{LONGITUDINAL_MICROBLEEDS_TSV}", f"/{LONGITUDINAL_DIR}", f"/{REVIEWS_DIR}")


def bids_case_id(entities: dict[str, str | None]) -> str:
    """sub-<l>[_ses-<l>][_acq-<l>][_run-<l>]: what a BIDS case's output names start with."""
    return "_".join(f"{_BIDS_PREFIXES[e]}-{entities[e]}" for e in BIDS_CASE_ENTITIES if entities.get(e))


def bids_anat_dir(subject: str, session: str | None) -> str:
    return f"sub-{subject}/" + (f"ses-{session}/" if session else "") + "anat"


def bids_image_name(subject: str, session: str | None, channel: str) -> str:
    """The plain name a channel's image has in a BIDS dataset (for messages about a missing one)."""
    return f"{bids_case_id({'subject': subject, 'session': session})}_{BIDS_SUFFIXES[channel]}{BIDS_IMAGE_EXTENSIONS[0]}"


def bids_output_paths(entities: dict[str, str | None]) -> dict[str, str]:
    """Output kind -> path in the derivatives dataset: the mask (and its sidecar) and the probability
    map on the T2starw grid, the lesion table beside them, the QC picture under figures/."""
    case_id = bids_case_id(entities)
    stem = f"{bids_anat_dir(entities['subject'], entities.get('session'))}/{case_id}_space-{BIDS_SUFFIXES[REFERENCE_CHANNEL]}_label-CMB"
    return {"mask": f"{stem}_mask{NIFTI}", "mask_sidecar": f"{stem}_mask.json", "probability": f"{stem}_probseg{NIFTI}",
            "probability_sidecar": f"{stem}_probseg.json",
            "lesions": f"{stem}_lesions.tsv", "qc": f"{BIDS_FIGURES_DIR}/{case_id}_label-CMB_qc.png",
            "preprocessing_qc": f"{BIDS_FIGURES_DIR}/{case_id}_desc-preprocessing_qc.png",
            "brain_mask": f"{stem.removesuffix('_label-CMB')}_desc-brain_mask{NIFTI}",
            "brain_mask_sidecar": f"{stem.removesuffix('_label-CMB')}_desc-brain_mask.json",
            "record": f"{RECORDS_DIR}/{record_name(case_id)}",
            **{kind: f"{DICOM_OUTPUTS_DIR}/{case_id}{suffix}" for kind, suffix in _DICOM_OUTPUT_SUFFIXES.items()}}


def platform_image_dir(slug: str) -> str:
    """Where the platform puts an image socket's file, relative to /input or /output."""
    return f"{IMAGES_DIR}/{slug}"


def platform_output_paths() -> dict[str, str]:
    """Output kind -> path relative to /output, in the platform's layout."""
    return {"mask": f"{platform_image_dir(OUTPUT_SOCKETS['mask'])}/{PLATFORM_MASK_FILE}",
            "count": f"{OUTPUT_SOCKETS['count']}.json", "total_volume": f"{OUTPUT_SOCKETS['total_volume']}.json"}


def seed_output_paths(stem: str) -> dict[str, str]:
    """Output kind -> path relative to the output folder, in the seed's layout: every name carries
    the case's stem, so no two cases share an output."""
    paths = {kind: f"{IMAGES_DIR}/{stem}{suffix}" for kind, suffix in _OUTPUT_SUFFIXES.items()}
    paths["record"] = f"{RECORDS_DIR}/{record_name(stem)}"
    return paths
