"""`mixmicrobleednet predict|bids|merge|phantoms|train|import-v1|evaluate`: the command line over the package."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import layout
from .lesions import DEFAULT_THRESHOLD, EXTRACTED_BRAIN_EDGE_MARGIN_MM
from .model import PRECISIONS
from .modelfolder import AUTO, DEFAULT_MODEL, MODELS_VARIABLE

log = logging.getLogger("mixmicrobleednet")


DEVICES = ("auto", "cuda", "cpu")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: CUDA when a GPU is visible, else CPU (default: auto)")


def _one_of(choices: tuple[str, ...]):
    """A parser of an environment variable's value for an option with `choices`."""
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"use {', '.join(choices)}")
        return text
    return parse


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


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """The options that `predict` and the container (process.py) share."""
    _add_device(parser)
    parser.add_argument("--fast", action="store_true", help="no mirroring test-time augmentation (8x fewer passes)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="the network's arithmetic on the CPU (default float32; bfloat16 is faster only on CPUs "
                             "with AMX or AVX-512 BF16 and changes masks a little: see the model card)")
    parser.add_argument("--threshold", type=_probability, default=DEFAULT_THRESHOLD,
                        help="microbleed probability above which a voxel is a microbleed voxel (default: 0.5, "
                             "nnU-Net's argmax, as the seed)")
    parser.add_argument("--min-size-mm3", type=_non_negative, default=0.0,
                        help="drop microbleeds smaller than this volume in mm³ (default: 0, keep all)")
    parser.add_argument("--edge-margin-mm", type=_non_negative, default=None,
                        help="set aside microbleeds whose centre lies within this distance of the brain mask's edge "
                             "(left out of the mask and the counts, listed in the record) "
                             f"(default: {EXTRACTED_BRAIN_EDGE_MARGIN_MM:g} where the tool extracts the brain, whose "
                             "mask reaches onto dura and bone; else 0, keep all; 3 is measured in the T2*-only model's "
                             "card and recommended for it)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write the microbleed probability map (float32, T2* grid)")
    parser.add_argument("--no-qc", action="store_true", help="do not draw the QC picture per case")
    parser.add_argument("--no-regions", action="store_true",
                        help="no MARS region per microbleed (lobar, deep, infratentorial): saves the atlas "
                             "registration, about 7 s per case with microbleeds")
    parser.add_argument("--no-registration", action="store_true",
                        help="T1/T2 not on the T2* grid are placed by their headers alone (already co-registered "
                             "scans on another grid); default: registered rigidly onto the T2* scan")
    brain = parser.add_mutually_exclusive_group()
    brain.add_argument("--skull-stripped", action="store_true",
                       help="the scans are skull-stripped already: no brain extraction (default: found out per "
                            "case from the T2* scan's background; see the README)")
    brain.add_argument("--extract-brain", action="store_true",
                       help="extract the brain (deepbet) even where the T2* scan looks skull-stripped")
    brain.add_argument("--brain-mask", type=Path, metavar="FILE|FOLDER",
                       help="use these brain masks: a file (one case) or a folder with <case>_brainmask.nii.gz "
                            "per case, on the T2* grid or placed by its header")
    _defaults_from_environment(parser)


def _flag(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false, yes/no or on/off: {text}")


#: The prediction options as environment variables, for starts without arguments (Grand-Challenge
#: and its forge test run start the image so): option destination -> (variable, parser of its value).
ENVIRONMENT_OPTIONS = {
    "device": ("MIXMICROBLEEDNET_DEVICE", _one_of(DEVICES)),
    "fast": ("MIXMICROBLEEDNET_FAST", _flag),
    "precision": ("MIXMICROBLEEDNET_PRECISION", _one_of(PRECISIONS)),
    "threshold": ("MIXMICROBLEEDNET_THRESHOLD", _probability),
    "min_size_mm3": ("MIXMICROBLEEDNET_MIN_SIZE_MM3", _non_negative),
    "edge_margin_mm": ("MIXMICROBLEEDNET_EDGE_MARGIN_MM", _non_negative),
    "save_probabilities": ("MIXMICROBLEEDNET_SAVE_PROBABILITIES", _flag),
    "no_qc": ("MIXMICROBLEEDNET_NO_QC", _flag),
    "no_regions": ("MIXMICROBLEEDNET_NO_REGIONS", _flag),
    "no_registration": ("MIXMICROBLEEDNET_NO_REGISTRATION", _flag),
    "skull_stripped": ("MIXMICROBLEEDNET_SKULL_STRIPPED", _flag),
    "extract_brain": ("MIXMICROBLEEDNET_EXTRACT_BRAIN", _flag),
}


def _defaults_from_environment(parser: argparse.ArgumentParser) -> None:
    """Variables set in the environment become the options' defaults; the command line wins."""
    defaults = {}
    for destination, (variable, parse) in ENVIRONMENT_OPTIONS.items():
        if variable in os.environ:
            try:
                defaults[destination] = parse(os.environ[variable])
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"environment variable {variable}={os.environ[variable]!r}: {exc}")
    parser.set_defaults(**defaults)


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, such as 1/4: {text}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"K/N needs 1 <= K <= N: {text}")
    return index, count


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|DIR",
                        help=f"a shipped model's name (a folder in ${MODELS_VARIABLE}, else models/ of the checkout), an "
                             "nnU-Net v2 model folder, or "
                             f"{AUTO}: per case the shipped model with the most channels the case has (default: "
                             f"{DEFAULT_MODEL})")


def add_cohort_options(parser: argparse.ArgumentParser) -> None:
    """Which cases a process takes, and whether finished ones are done again."""
    parser.add_argument("--resume", action="store_true",
                        help="skip cases whose record shows them finished with the same inputs, model and settings")
    parser.add_argument("--shard", type=_shard, metavar="K/N",
                        help="take every N-th case of the sorted cases from the K-th on (1-based; "
                             "e.g. $SLURM_ARRAY_TASK_ID/N with --array=1-N)")
    parser.add_argument("--participant-label", nargs="+", default=[], metavar="LABEL",
                        help="only these subjects (with or without sub-)")
    parser.add_argument("--session-label", nargs="+", default=[], metavar="LABEL",
                        help="only these sessions (with or without ses-)")


def add_bids_arguments(parser: argparse.ArgumentParser) -> None:
    """The BIDS-App positional arguments (the CLI's `bids` command and the container's BIDS form)."""
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset (with dataset_description.json)")
    parser.add_argument("output_dir", type=Path, help="the derivatives dataset to write (created)")
    parser.add_argument("analysis_level", choices=("participant", "group"))
    add_model_option(parser)


def run_bids_app(args: argparse.Namespace) -> int:
    """`participant`: a run over the BIDS dataset (runner); `group`: the cohort table."""
    from collections import Counter

    from .bids import group, is_bids_dataset
    from .cases import InputFolderError
    from .modelfolder import ModelError, resolve_models
    from .runner import EXIT_CASE_FAILED, EXIT_OK, EXIT_RUN_FAILED, run

    if not is_bids_dataset(args.bids_dir):
        log.error("%s: not a BIDS dataset (no %s)", args.bids_dir, layout.DATASET_DESCRIPTION)
        return EXIT_RUN_FAILED
    if args.analysis_level == "participant":
        return run(args.bids_dir, args.output_dir, run_options(args, args.model))[0]
    try:
        rows = group(args.bids_dir, args.output_dir, resolve_models(args.model).channels,
                     tuple(args.participant_label), tuple(args.session_label))
    except (ModelError, InputFolderError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_RUN_FAILED
    # Counts per status, not case names: on a cohort of thousands cohort.tsv says which cases and why.
    statuses = Counter(r["status"] for r in rows)
    all_ok = set(statuses) == {"ok"}
    log.log(logging.INFO if all_ok else logging.ERROR, "%s: %d case(s): %s", args.output_dir / layout.BIDS_COHORT_TSV,
            len(rows), ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "none")
    return EXIT_OK if all_ok else EXIT_CASE_FAILED


def run_options(args: argparse.Namespace, model: str | Path):
    """RunOptions from the options of add_prediction_options and add_cohort_options."""
    from .brain import BrainMasking, BrainSettings
    from .lesions import LesionSettings
    from .model import PredictionSettings
    from .pipeline import OutputSettings
    from .runner import RunOptions

    return RunOptions(
        model=model, device=args.device, prediction=PredictionSettings(use_mirroring=not args.fast, precision=args.precision),
        output=OutputSettings(LesionSettings(args.threshold, args.min_size_mm3, args.edge_margin_mm), args.save_probabilities, not args.no_qc,
                              not args.no_regions),
        resume=args.resume, shard=args.shard, participants=tuple(args.participant_label),
        sessions=tuple(args.session_label), register=not args.no_registration,
        brain=BrainSettings(BrainMasking.GIVEN if args.brain_mask else BrainMasking.SKULL_STRIPPED if args.skull_stripped
                            else BrainMasking.EXTRACT if args.extract_brain else BrainMasking.AUTO,
                            args.brain_mask, args.device != "cpu"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixmicrobleednet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="segment microbleeds in a folder of cases (seed layout)")
    predict.add_argument("-i", "--input", type=Path, required=True,
                         help="folder with sub-<id>[_ses-<id>]_space-<space>_desc-masked_<channel>.nii[.gz]")
    predict.add_argument("-o", "--output", type=Path, required=True, help="output folder (created)")
    add_model_option(predict)
    add_prediction_options(predict)
    add_cohort_options(predict)

    bids = commands.add_parser("bids", help="the BIDS App: a BIDS dataset in, a BIDS derivatives dataset out",
                               description="BIDS App: `participant` segments the chosen participants' T2starw images "
                                           "(with T1w and T2w when the model needs them), `group` writes cohort.tsv "
                                           "from the records of the participant runs.")
    add_bids_arguments(bids)
    add_prediction_options(bids)
    add_cohort_options(bids)

    merge = commands.add_parser("merge", help="rebuild results.json and summary.csv from the records in an output "
                                              "folder (after several processes wrote to it)")
    merge.add_argument("output", type=Path)

    phantoms = commands.add_parser("phantoms", help="write synthetic microbleed phantoms with labels")
    phantoms.add_argument("--out", type=Path, required=True)
    phantoms.add_argument("--n", type=int, required=True, help="number of cases (cohorts take turns)")
    phantoms.add_argument("--seed", type=int, required=True)
    phantoms.add_argument("--cohort", action="append",
                          help="acquisition(s) to use, in turn: highres3d, thickslice, lowres (default: these three), "
                               "midslice (2 x 0.6 x 0.6 mm, not a VALDO cohort: for held-out sets)")
    phantoms.add_argument("--varied", action="store_true",
                          help="mimics (veins, calcifications, iron, signal loss near air), contrast, noise and mask "
                               "extent drawn from wide distributions")
    phantoms.add_argument("--loose-masks", action="store_true",
                          help="every case masked as a brain extraction leaves it: CSF and a rim of the Colin27 head "
                               "up to 6 mm beyond the brain (needs mricron-data)")
    phantoms.add_argument("--raw", action="store_true",
                          help="the raw twins of the phantoms this seed gives: not skull-stripped (the Colin27 head "
                               "of mricron-data), T1/T2 on grids of their own, moved between scans")

    train = commands.add_parser("train", help="train fold 'all' with nnU-Net v2 on labelled cases")
    train.add_argument("--data", type=Path, required=True, help="seed-layout folder with sub-<id>_space-T2S_CMB.nii.gz labels")
    train.add_argument("--out", type=Path, required=True, help="model folder to write")
    train.add_argument("--config", choices=("compact", "mixmicrobleednet-v1"), default="compact")
    _add_device(train)
    train.add_argument("--epochs", type=int, help="override the configuration's number of epochs")
    train.add_argument("--iterations-per-epoch", type=int, help="override the configuration's iterations per epoch")
    train.add_argument("--initial-lr", type=float, help="override the configuration's initial learning rate "
                                                      "(polynomial decay to 0 over the epochs), e.g. lower for a fine-tune")
    train.add_argument("--work", type=Path, help="nnU-Net raw/preprocessed/results folder (default: beside --out)")
    train.add_argument("--channels", nargs="+", choices=layout.CHANNELS, default=list(layout.CHANNELS),
                       help=f"the channels the network reads, in this order ({layout.REFERENCE_CHANNEL} among them; "
                            f"default: {' '.join(layout.CHANNELS)}); e.g. {layout.REFERENCE_CHANNEL} alone for a "
                            "model of T2*/SWI-only cohorts")
    train.add_argument("--init", type=Path, metavar="MODEL_DIR",
                       help="start from this model folder's weights (same configuration and channels): fine-tuning")
    train.add_argument("--resume", nargs="?", const=True, default=False, type=Path, metavar="CHECKPOINT",
                       help="go on from the latest checkpoint in --work (written every epoch), or from CHECKPOINT "
                            "(nnU-Net's checkpoint_latest.pth carried from another machine); reuses the data "
                            "already preprocessed in --work for the same cases")

    import_v1 = commands.add_parser("import-v1", help="convert an nnU-Net v1 3d_fullres model (such as the 2021 "
                                                     "MixMicrobleedNet checkpoint) into a model folder for --model")
    import_v1.add_argument("--plans", type=Path, required=True, help="the v1 plans.pkl")
    import_v1.add_argument("--checkpoint", type=Path, required=True, help="model_final_checkpoint.model")
    import_v1.add_argument("--out", type=Path, required=True, help="nnU-Net v2 model folder to write")

    evaluate = commands.add_parser("evaluate", help="VALDO Task 2 measures of predictions against labels")
    evaluate.add_argument("--labels", type=Path, required=True, help="folder with sub-<id>_space-T2S_CMB.nii.gz")
    evaluate.add_argument("--predictions", type=Path, required=True,
                          help="folder with sub-<id>_space-T2S_prediction.nii.gz (or its images/ subfolder)")
    evaluate.add_argument("--out", type=Path, help="write per-case CSV and summary JSON here")
    evaluate.add_argument("--cohorts", type=Path, help="phantoms.csv (subject,cohort) for per-cohort results")
    evaluate.add_argument("--matching", choices=("overlap", "valdo"), default="overlap",
                          help="overlap: a reference microbleed is found when a prediction overlaps it (default); "
                               "valdo: the VALDO 2021 challenge's Task 2 rule (centre-of-mass distance, median/IQR)")
    distance = evaluate.add_mutually_exclusive_group()
    distance.add_argument("--distance-voxels", type=float, help="valdo: matching distance in voxel indices, "
                                                                 "as the challenge's code measured it")
    distance.add_argument("--distance-mm", type=float, help="valdo: matching distance in millimetres")
    evaluate.add_argument("--probabilities", action="store_true",
                          help="score the probability maps (<case>_probability.nii.gz, --save-probabilities) "
                               "instead of the masks (valdo: volume from probabilities >= 0.5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command == "predict":
        from .runner import run

        return run(args.input, args.output, run_options(args, args.model))[0]
    if args.command == "bids":
        return run_bids_app(args)
    if args.command == "merge":
        from .records import merge

        if not args.output.is_dir():
            log.error("%s: no such output folder", args.output)
            return 2
        if (args.output / layout.DATASET_DESCRIPTION).is_file():  # results.json would not be valid BIDS there
            log.error("%s is a BIDS derivatives dataset: its cohort table comes from "
                      "`mixmicrobleednet bids BIDS_DIR %s group`", args.output, args.output)
            return 2
        merged = merge(args.output)
        log.info("%s: results.json and summary.csv rebuilt from %d record(s)", args.output, len(merged))
        return 0
    if args.command == "phantoms":
        from .phantoms import generate

        try:
            generate(args.out, args.n, args.seed, args.cohort, args.raw, args.varied, args.loose_masks)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        return 0
    if args.command == "train":
        from .train import train

        try:
            train(args.data, args.out, args.config, device=args.device, work_dir=args.work, epochs=args.epochs,
                  iterations_per_epoch=args.iterations_per_epoch, initial_lr=args.initial_lr, channels=tuple(args.channels),
                  init_from=args.init, resume=args.resume)
        except ValueError as exc:  # no labelled cases, channels, --init
            log.error("%s", exc)
            return 2
        return 0
    if args.command == "import-v1":
        from .v1import import V1ImportError, import_v1

        try:
            import_v1(args.plans, args.checkpoint, args.out)
        except V1ImportError as exc:
            log.error("%s", exc)
            return 2
        return 0
    if args.command == "evaluate":
        from .evaluate import evaluate_folders

        unit, distance = ("mm", args.distance_mm) if args.distance_mm is not None else ("voxel", args.distance_voxels)
        try:
            summary = evaluate_folders(args.labels, args.predictions, args.out, args.cohorts, args.matching, distance,
                                       unit, args.probabilities)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        print(summary.to_string())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
