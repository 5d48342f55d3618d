"""Every option of the command line, in one table: each row gives the flag, the commands that take
it, how its value is read, its default and help, its MIXMICROBLEEDNET_* environment variable where
the container reads one, and the settings fields it fills. From the table come the argparse parsers
(cli.py, process.py), the environment defaults, the run's frozen settings (runner.options_from:
RunOptions and the settings inside it, and so the record's settings that --resume compares) and
README's option list.
Adding an option: a row here, and the code that reads its settings field.

Light on purpose (no numpy, SimpleITK or torch): `mixmicrobleednet --help` reads only this.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, get_type_hints

from . import layout
from .modelfolder import AUTO, DEFAULT_MODEL, EXTRACTED_BRAIN_EDGE_MARGIN_MM, MODELS_VARIABLE

#: nnU-Net's argmax over {background, CMB} is `p(CMB) > 0.5`; the same rule keeps the seed's masks.
DEFAULT_THRESHOLD = 0.5
DEVICES = ("auto", "cuda", "cpu")
#: The values PredictionSettings.precision takes.
PRECISIONS = ("float32", "bfloat16")
#: The values PredictionSettings.cpu_runtime takes: what runs the network on the CPU, default first.
CPU_RUNTIMES = ("openvino-checked", "openvino-accurate", "openvino", "torch")
#: How train's foreground-centred patches pick their centre: "voxel" (nnU-Net's: any labelled voxel,
#: so a 10 mm microbleed is centred 125 times as often as a 2 mm one) or "lesion" (each microbleed of
#: a case as often: the small ones, which every model missed, as often as the large).
FOREGROUND_SAMPLING = ("voxel", "lesion")
VARIABLE_PREFIX = "MIXMICROBLEEDNET_"

#: The commands that run the pipeline: their options fill RunOptions, and the container's also come
#: from environment variables (Grand-Challenge starts the image without arguments).
RUN_COMMANDS = ("predict", "bids", "container")


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1): {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text}")
    return value


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, such as 1/4: {text}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"K/N needs 1 <= K <= N: {text}")
    return index, count


def _flag(text: str) -> bool:
    """An on/off option's environment variable."""
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false, yes/no or on/off: {text}")


def _fills(path: str, convert: Callable[[Any], Any] = lambda value: value) -> Callable[[Any], dict[str, Any]]:
    """The option's value, converted, into one settings field (a dotted path inside RunOptions)."""
    return lambda value: {path: convert(value)}


def _masking(kind: str, given: bool = False) -> Callable[[Any], dict[str, Any]]:
    """One of the brain-mask options: set, it says how the brain is found (brain.BrainMasking)."""
    return lambda value: ({"brain.masking": kind} | ({"brain.given": value} if given else {})) if value else {}


@dataclass(frozen=True, kw_only=True)
class Option:
    flag: str  # "--threshold"; a positional argument's name without dashes
    help: str
    commands: tuple[str, ...]
    type: Callable[[str], Any] | None = None
    default: Any = None
    action: str | None = None  # "store_true", "append"
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    nargs: str | None = None
    const: Any = None
    required: bool = False
    short: str | None = None  # "-i"
    environment: bool = False  # read from MIXMICROBLEEDNET_<NAME> too (RUN_COMMANDS)
    exclusive: str | None = None  # options of one mutually exclusive group share this name
    fills: Callable[[Any], dict[str, Any]] | None = None  # the settings fields (RUN_COMMANDS)
    shown_default: str | None = None  # README's and --help's word for a default that is no plain value

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def variable(self) -> str | None:
        return VARIABLE_PREFIX + self.dest.upper() if self.environment else None

    def environment_value(self, text: str) -> Any:
        if self.action == "store_true":
            return _flag(text)
        if self.choices and text not in self.choices:
            raise argparse.ArgumentTypeError(f"use {', '.join(self.choices)}")
        return self.type(text) if self.type else text


_RUN = RUN_COMMANDS
_CASES = ("predict", "bids")  # the container takes -i/-o as /input and /output
OPTIONS: tuple[Option, ...] = (
    Option(flag="--verbose", short="-v", action="store_true", commands=("mixmicrobleednet",), help="debug logging"),
    Option(flag="--version", action="version", commands=("mixmicrobleednet",), help="the version, and exit"),
    Option(flag="--input", short="-i", type=Path, required=True, commands=("predict",),
           help="folder with sub-<id>[_ses-<id>]_space-<space>_desc-masked_<channel>.nii[.gz], a BIDS dataset, or "
                "DICOM files (any structure: series identified and converted into OUTPUT/sourcedata/bids)"),
    Option(flag="--output", short="-o", type=Path, required=True, commands=("predict",),
           help="output folder (created)"),
    Option(flag="bids_dir", type=Path, commands=("bids",), help="the BIDS dataset (with dataset_description.json)"),
    Option(flag="output_dir", type=Path, commands=("bids",), help="the derivatives dataset to write (created)"),
    Option(flag="analysis_level", choices=("participant", "group"), commands=("bids",),
           help="participant: segment the chosen participants; group: cohort.tsv from their records"),
    Option(flag="--model", default=DEFAULT_MODEL, metavar="NAME|DIR", commands=_RUN, fills=_fills("model"),
           shown_default=f"{AUTO}, or $MIXMICROBLEEDNET_MODEL where set",
           help=f"a shipped model's name (a folder in ${MODELS_VARIABLE}, else the package's models), an nnU-Net v2 "
                f"model folder, or {AUTO}: per case the shipped model with the most channels the case has"),
    Option(flag="--device", choices=DEVICES, default="auto", commands=(*_RUN, "train"), environment=True,
           fills=lambda value: {"device": value, "brain.gpu_allowed": value != "cpu"},
           help="auto: CUDA when a GPU is visible, else CPU"),
    Option(flag="--fast", action="store_true", commands=_RUN, environment=True,
           fills=_fills("prediction.use_mirroring", lambda value: not value),
           help="no mirroring test-time augmentation (8x fewer passes)"),
    Option(flag="--precision", choices=PRECISIONS, default="float32", commands=_RUN, environment=True,
           fills=_fills("prediction.precision"),
           help="the network's arithmetic on the CPU (bfloat16 is faster only on CPUs with AMX or AVX-512 BF16 and "
                "changes masks a little: see the model card)"),
    Option(flag="--cpu-runtime", choices=CPU_RUNTIMES, default=CPU_RUNTIMES[0], commands=_RUN, environment=True,
           fills=_fills("prediction.cpu_runtime"),
           help="what runs the network on the CPU: openvino-checked (OpenVINO in bfloat16 where the CPU has AMX or "
                "AVX-512 BF16, each tile near a possible microbleed again in float32: openvino-accurate's masks and "
                "probabilities from 0.01 up; elsewhere openvino-accurate itself), openvino-accurate (OpenVINO in float32 "
                "with torch's accuracy: the same masks as torch on the benchmark's and held-out phantoms), openvino (a "
                "few per cent faster; logits within about 1e-3 of torch's: one voxel of 18 held-out phantoms differs) or "
                "torch (PyTorch); a GPU and --precision bfloat16 always run PyTorch"),
    Option(flag="--threshold", type=_probability, default=DEFAULT_THRESHOLD, commands=_RUN, environment=True,
           fills=_fills("output.lesions.threshold"),
           help="microbleed probability above which a voxel is a microbleed voxel (0.5: nnU-Net's argmax, as the seed)"),
    Option(flag="--min-size-mm3", type=_non_negative, default=0.0, commands=_RUN, environment=True,
           fills=_fills("output.lesions.min_size_mm3"), help="drop microbleeds smaller than this volume in mm³ (0: keep all)"),
    Option(flag="--edge-margin-mm", type=_non_negative, commands=_RUN, environment=True,
           fills=_fills("output.lesions.edge_margin_mm"),
           shown_default=f"where the tool extracts the brain, the model's (its card; {EXTRACTED_BRAIN_EDGE_MARGIN_MM:g} "
                         "where it does not say), else 0",
           help="set aside microbleeds whose centre lies within this distance of the brain mask's edge (left out of "
                "the mask and the counts, listed in the record); an extracted brain's mask reaches onto dura and "
                "bone"),
    Option(flag="--save-probabilities", action="store_true", commands=_RUN, environment=True,
           fills=_fills("output.save_probabilities"), help="also write the microbleed probability map (float32, T2* grid)"),
    Option(flag="--no-qc", action="store_true", commands=_RUN, environment=True,
           fills=_fills("output.qc_picture", lambda value: not value), help="do not draw the QC picture per case"),
    Option(flag="--no-regions", action="store_true", commands=_RUN, environment=True,
           fills=_fills("output.regions", lambda value: not value),
           help="no MARS region per microbleed (lobar, deep, infratentorial): saves the atlas registration, about "
                "7 s per case with microbleeds"),
    Option(flag="--no-registration", action="store_true", commands=_RUN, environment=True,
           fills=_fills("register", lambda value: not value),
           help="T1/T2 not on the T2* grid are placed by their headers alone (already co-registered scans on another "
                "grid); without it they are registered rigidly onto the T2* scan"),
    Option(flag="--skull-stripped", action="store_true", commands=_RUN, environment=True, exclusive="brain",
           fills=_masking("skull-stripped"),
           help="the scans are skull-stripped already: no brain extraction (without it, found out per case from the "
                "T2* scan's background; see the README)"),
    Option(flag="--extract-brain", action="store_true", commands=_RUN, environment=True, exclusive="brain",
           fills=_masking("extract"), help="extract the brain (deepbet) even where the T2* scan looks skull-stripped"),
    Option(flag="--brain-mask", type=Path, metavar="FILE|FOLDER", commands=_RUN, exclusive="brain",
           fills=_masking("given", given=True),
           help="use these brain masks: a file (one case) or a folder with <case>_brainmask.nii.gz per case, on the "
                "T2* grid or placed by its header"),
    Option(flag="--dicom-rules", type=Path, metavar="FILE", commands=("predict", "dicom2bids"), fills=_fills("dicom_rules"),
           help="a site's rule table (dicom_rules.toml's format) that identifies DICOM series before the built-in one"),
    Option(flag="--deidentify", action="store_true", commands=_RUN, environment=True,
           fills=_fills("output.deidentify"),
           help="DICOM outputs (input was DICOM) name the patient by the BIDS subject label, not the source's name, "
                "ID and birth date"),
    Option(flag="--resume", action="store_true", commands=_RUN, fills=_fills("resume"),
           help="skip cases whose record shows them finished with the same inputs, model and settings"),
    Option(flag="--shard", type=_shard, metavar="K/N", commands=_RUN, fills=_fills("shard"),
           help="take every N-th case of the sorted cases from the K-th on (1-based; e.g. $SLURM_ARRAY_TASK_ID/N "
                "with --array=1-N)"),
    Option(flag="--participant-label", nargs="+", default=[], metavar="LABEL", commands=(*_RUN, "longitudinal"),
           fills=_fills("participants", tuple), help="only these subjects (with or without sub-)"),
    Option(flag="--session-label", nargs="+", default=[], metavar="LABEL", commands=_RUN,
           fills=_fills("sessions", tuple), help="only these sessions (with or without ses-)"),

    Option(flag="output", type=Path, commands=("merge",), help="the output folder whose records to merge"),
    Option(flag="dicom_dir", type=Path, commands=("dicom2bids",), help="a folder of DICOM files (any structure)"),
    Option(flag="bids_out", type=Path, metavar="bids_dir", commands=("dicom2bids",),
           help="the BIDS dataset to write (created, or added to: series converted before are kept)"),
    Option(flag="--json", action="store_true", commands=("models",), help="as JSON, for scripts"),

    # The commands that read a finished run's output folder (and its T2* scans).
    Option(flag="output_dir", type=Path, commands=("longitudinal", "review"),
           help="the output folder of `predict` or `bids ... participant` (seed layout or BIDS derivatives)"),
    Option(flag="--input", short="-i", type=Path, commands=("longitudinal", "review", "train"),
           help="the run's input folder, for the T2* scans (default: the raw dataset a BIDS derivatives dataset "
                "names)"),
    Option(flag="--rater", commands=("review",), shown_default="your login name",
           help="who reviews: names your review files (letters, digits, '.', '_', '-')"),
    Option(flag="--host", default="127.0.0.1", commands=("review",),
           help="the address to listen on (another than 127.0.0.1 shows the cases to the network)"),
    Option(flag="--port", type=int, default=8765, commands=("review",),
           help="the port to listen on (0: a free one; the address is printed)"),
    Option(flag="--export", action="store_true", commands=("review",),
           help="no app: write a self-contained HTML page per reviewed case and each finished review's mask, and exit"),

    Option(flag="--out", type=Path, required=True, commands=("phantoms",), help="folder to write the phantoms into"),
    Option(flag="--n", type=int, required=True, commands=("phantoms",), help="number of cases (cohorts take turns)"),
    Option(flag="--seed", type=int, required=True, commands=("phantoms",), help="the random seed: same seed, same phantoms"),
    Option(flag="--cohort", action="append", commands=("phantoms",),
           help="acquisition(s) to use, in turn: highres3d, thickslice, lowres (default: these three), midslice "
                "(2 x 0.6 x 0.6 mm, not a VALDO cohort: for held-out sets)"),
    Option(flag="--varied", action="store_true", commands=("phantoms",),
           help="mimics (veins, calcifications, iron, signal loss near air), contrast, noise and mask extent drawn "
                "from wide distributions"),
    Option(flag="--loose-masks", action="store_true", commands=("phantoms",),
           help="every case masked as a brain extraction leaves it: CSF and a rim of the Colin27 head up to 6 mm "
                "beyond the brain (needs mricron-data)"),
    Option(flag="--superficial", action="store_true", commands=("phantoms",),
           help="superficial cortical microbleeds too (centre 1-3 mm under the brain's surface, lobar, 2-6 mm): "
                "a quarter of the microbleeds"),
    Option(flag="--small", action="store_true", commands=("phantoms",),
           help="small microbleeds only (2-4 mm, log-uniform): the ones thick slices hide"),
    Option(flag="--raw", action="store_true", commands=("phantoms",),
           help="the raw twins of the phantoms this seed gives: not skull-stripped (the Colin27 head of mricron-data), "
                "T1/T2 on grids of their own, moved between scans"),

    Option(flag="--processes", type=_at_least_one, commands=("phantoms", "train"),
           help="processes that make phantoms (default 1) or, in train, prepare the cases, preprocess them and feed "
                "the network (default 2): on a machine with many cores, its count"),

    Option(flag="--data", type=Path, commands=("train",), exclusive="training data",
           help=f"seed-layout folder with {layout.label_name(layout.case_stem('<id>'))} labels"),
    Option(flag="--from-reviews", type=Path, metavar="OUTPUT", commands=("train",), exclusive="training data",
           help="train on the reviewed cases of this output folder (each finished review that decided every "
                "detection: accepted and added microbleeds are the label, rejected ones background); with "
                "--init MODEL to fine-tune on a cohort's own reads"),
    Option(flag="--out", type=Path, required=True, commands=("train",), help="model folder to write"),
    Option(flag="--config", choices=("compact", "mixmicrobleednet-v1"), default="compact", commands=("train",),
           help="the network and schedule: compact (CPU-sized) or the 2021 paper's 3d_fullres"),
    Option(flag="--epochs", type=int, commands=("train",), help="override the configuration's number of epochs"),
    Option(flag="--iterations-per-epoch", type=int, commands=("train",),
           help="override the configuration's iterations per epoch"),
    Option(flag="--initial-lr", type=float, commands=("train",),
           help="override the configuration's initial learning rate (polynomial decay to 0 over the epochs), e.g. "
                "lower for a fine-tune"),
    Option(flag="--work", type=Path, commands=("train",),
           help="nnU-Net raw/preprocessed/results folder (default: beside --out)"),
    Option(flag="--channels", nargs="+", choices=layout.CHANNELS, default=list(layout.CHANNELS), commands=("train",),
           help=f"the channels the network reads, in this order ({layout.REFERENCE_CHANNEL} among them); e.g. "
                f"{layout.REFERENCE_CHANNEL} alone for a model of T2*/SWI-only cohorts"),
    Option(flag="--init", type=Path, metavar="MODEL_DIR", commands=("train",),
           help="start from this model folder's weights (same configuration and channels): fine-tuning"),
    Option(flag="--resume", nargs="?", const=True, default=False, type=Path, metavar="CHECKPOINT", commands=("train",),
           help="go on from the latest checkpoint in --work (written every epoch), or from CHECKPOINT (nnU-Net's "
                "checkpoint_latest.pth carried from another machine); reuses the data already preprocessed in --work "
                "for the same cases"),
    Option(flag="--foreground-sampling", choices=FOREGROUND_SAMPLING, default=FOREGROUND_SAMPLING[0], commands=("train",),
           help="how the patches centred on a microbleed pick it: voxel (nnU-Net's: large microbleeds far more often) "
                "or lesion (each microbleed of a case as often: the small ones too)"),
    Option(flag="--stop-after-minutes", type=float, commands=("train",),
           help="stop at the end of the first epoch that ends after this many minutes, its checkpoint written and no "
                "model exported; --resume goes on from it (a job with a time limit: a SLURM slot, a lent GPU)"),

    Option(flag="--plans", type=Path, required=True, commands=("import-v1",), help="the v1 plans.pkl"),
    Option(flag="--checkpoint", type=Path, required=True, commands=("import-v1",), help="model_final_checkpoint.model"),
    Option(flag="--out", type=Path, required=True, commands=("import-v1",), help="nnU-Net v2 model folder to write"),

    Option(flag="--labels", type=Path, required=True, commands=("evaluate",),
           help=f"folder with {layout.label_name(layout.case_stem('<id>'))}"),
    Option(flag="--predictions", type=Path, required=True, commands=("evaluate",),
           help="folder with sub-<id>_space-T2S_prediction.nii.gz (or its images/ subfolder)"),
    Option(flag="--out", type=Path, commands=("evaluate",), help="write per-case CSV and summary JSON here"),
    Option(flag="--cohorts", type=Path, commands=("evaluate",), help="phantoms.csv (subject,cohort) for per-cohort results"),
    Option(flag="--matching", choices=("overlap", "valdo"), default="overlap", commands=("evaluate",),
           help="overlap: a reference microbleed is found when a prediction overlaps it; valdo: the VALDO 2021 "
                "challenge's Task 2 rule (centre-of-mass distance, median/IQR)"),
    Option(flag="--distance-voxels", type=float, commands=("evaluate",), exclusive="distance",
           help="valdo: matching distance in voxel indices, as the challenge's 2021 release measured it"),
    Option(flag="--distance-mm", type=float, commands=("evaluate",), exclusive="distance",
           help="valdo: matching distance in millimetres, as its 2022 revision measures it"),
    Option(flag="--probabilities", action="store_true", commands=("evaluate",),
           help="score the probability maps (<case>_probability.nii.gz, --save-probabilities) instead of the masks "
                "(valdo: volume from probabilities >= 0.5)"),
)


def options_of(command: str) -> tuple[Option, ...]:
    return tuple(option for option in OPTIONS if command in option.commands)


def _shown_default(option: Option) -> str | None:
    if option.shown_default:
        return option.shown_default
    if option.action or option.required or option.default is None or option.default == [] or not option.flag.startswith("-"):
        return None
    return " ".join(map(str, option.default)) if isinstance(option.default, list) else f"{option.default}"


def add_options(parser: argparse.ArgumentParser, command: str, **defaults: Any) -> None:
    """The command's options from the table; `defaults` overrides the table's for this parser (the
    container's --model); for the run commands, MIXMICROBLEEDNET_* variables set in the environment
    become the defaults, and the command line wins."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for option in options_of(command):
        target = parser
        if option.exclusive:
            if option.exclusive not in groups:
                groups[option.exclusive] = parser.add_mutually_exclusive_group()
            target = groups[option.exclusive]
        keywords = {key: getattr(option, key) for key in ("type", "action", "choices", "metavar", "nargs", "const")
                    if getattr(option, key) is not None}
        if option.action:
            keywords.pop("type", None)
        if option.action == "version":
            from . import __version__

            keywords["version"] = f"%(prog)s {__version__}"
        shown = _shown_default(option)
        text = option.help + (f" (default: {shown})" if shown else "")
        names = [option.short, option.flag] if option.short else [option.flag]
        if option.flag.startswith("-"):
            keywords["help"] = text
            if option.action != "version":
                keywords["default"] = False if option.action == "store_true" else option.default
            if option.required:
                keywords["required"] = True
        else:
            keywords["help"] = text
        target.add_argument(*names, **keywords)
    parser.set_defaults(**defaults)
    if command in RUN_COMMANDS:
        parser.set_defaults(**environment_defaults(parser, command))


def environment_defaults(parser: argparse.ArgumentParser, command: str) -> dict[str, Any]:
    values = {}
    for option in options_of(command):
        if option.variable and option.variable in os.environ:
            try:
                values[option.dest] = option.environment_value(os.environ[option.variable])
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"environment variable {option.variable}={os.environ[option.variable]!r}: {exc}")
    return values


def settings_values(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The settings fields (dotted paths inside runner.RunOptions) a run command's parsed options fill."""
    values: dict[str, Any] = {}
    for option in options_of(command):
        if option.fills and hasattr(args, option.dest):
            values |= option.fills(getattr(args, option.dest))
    return values


def build(kind: type, values: dict[str, Any]):
    """A (nested) frozen dataclass from dotted field paths; fields not named keep their defaults."""
    hints = get_type_hints(kind)
    own = {name: value for name, value in values.items() if "." not in name}
    for field in fields(kind):
        inner = {name.split(".", 1)[1]: value for name, value in values.items() if name.startswith(field.name + ".")}
        if inner:
            assert is_dataclass(hints[field.name]), field.name
            own[field.name] = build(hints[field.name], inner)
    return kind(**own)


README_BEGIN, README_END = "<!-- options:start -->", "<!-- options:end -->"


def readme_table(command: str = "predict") -> str:
    """README's option list: one row per option of `command`, from the table."""
    rows = ["| option | environment variable | default | what it does |", "|---|---|---|---|"]
    for option in options_of(command):
        flag = f"`{option.short}`, `{option.flag}`" if option.short else f"`{option.flag}`"
        value = "" if option.action else f" {option.metavar or '|'.join(option.choices or ()) or option.dest.upper()}"
        value = value.replace("|", "\\|")  # a bare bar would end the table's cell
        rows.append(f"| {flag}{value} | {f'`{option.variable}`' if option.variable else '–'} | "
                    f"{_shown_default(option) or '–'} | {option.help.replace('<', '&lt;')} |")  # no HTML tag
    return "\n".join(rows)


def with_readme_table(text: str) -> str:
    """README text with the block between the option markers made anew from the table."""
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    return text[:start] + "\n" + readme_table() + "\n" + text[end:]


if __name__ == "__main__":  # python -m mixmicrobleednet.options README.md: write the table into README
    import sys

    readme = Path(sys.argv[1])
    readme.write_text(with_readme_table(readme.read_text()))
