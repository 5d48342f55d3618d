"""`mixmicrobleednet predict|bids|dicom2bids|models|merge|longitudinal|review|phantoms|train|import-v1|evaluate`: the command line over the package."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import layout
from .options import add_options

log = logging.getLogger("mixmicrobleednet")


def run_bids_app(args: argparse.Namespace) -> int:
    """`participant`: a run over the BIDS dataset (runner); `group`: the cohort table."""
    from collections import Counter

    from .bids import group, is_bids_dataset
    from .cases import InputFolderError
    from .longitudinal import main as compare_sessions
    from .modelfolder import ModelError, resolve_models
    from .runner import EXIT_CASE_FAILED, EXIT_OK, EXIT_RUN_FAILED, options_from, run

    if not is_bids_dataset(args.bids_dir):
        log.error("%s: not a BIDS dataset (no %s)", args.bids_dir, layout.DATASET_DESCRIPTION)
        return EXIT_RUN_FAILED
    if args.analysis_level == "participant":
        return run(args.bids_dir, args.output_dir, options_from(args, "bids"))[0]
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
    # Subjects with two or more sessions: their visits compared (none is no failure at group level).
    compared = compare_sessions(args.output_dir, args.bids_dir, tuple(args.participant_label), expected=False)
    return EXIT_OK if all_ok and compared == EXIT_OK else max(EXIT_CASE_FAILED, compared)


def convert_dicom(dicom_dir: Path, bids_dir: Path, site_rules: Path | None) -> int:
    """`dicom2bids`: 0 when every DICOM file was read and every identified series converted; 1 when
    some were not (the others are converted); 2 when nothing could be."""
    from .dicom import DicomError, dicom_to_bids

    if not dicom_dir.is_dir():
        log.error("%s: no such folder", dicom_dir)
        return 2
    try:
        table = dicom_to_bids(dicom_dir, bids_dir, site_rules)
    except (DicomError, OSError) as exc:
        log.error("%s", exc)
        return 2
    if table.empty:
        log.error("%s: no DICOM series found", dicom_dir)
        return 2
    return 1 if (table["status"] == "error").any() else 0


def list_models(as_json: bool) -> int:
    """`mixmicrobleednet models`: what --model NAME and auto choose from."""
    import json

    from .modelfolder import models_folder, shipped_models

    models = shipped_models()
    if not models:
        log.error("no shipped models in %s", models_folder())
        return 2
    rows = [{"name": name, "channels": list(model.channels), "path": str(model.path),
             "card": str(model.path / layout.MODEL_CARD) if (model.path / layout.MODEL_CARD).is_file() else None,
             "sha256": model.checksum} for name, model in models.items()]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['name']}: {' '.join(row['channels'])}\n  {row['path']}\n  card: {row['card'] or 'none'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixmicrobleednet", description=__doc__)
    add_options(parser, parser.prog)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("predict", help="segment microbleeds in a folder of cases (seed layout)")
    commands.add_parser("bids", help="the BIDS App: a BIDS dataset in, a BIDS derivatives dataset out",
                        description="BIDS App: `participant` segments the chosen participants' T2starw images (with "
                                    "T1w and T2w when the model needs them), `group` writes cohort.tsv from the "
                                    "records of the participant runs.")
    commands.add_parser("dicom2bids", help="a folder of DICOM files (a PACS export) into a BIDS dataset for `bids`",
                        description="Every series is identified from its tags by a rule table (T2*-GRE and SWI "
                                    "magnitude, T1, T2; phase, projections, localisers and derived images ignored) "
                                    "and converted with dcm2niix; BIDS_DIR/sourcedata/dicom_series.tsv says what "
                                    "became of each series and why.")
    commands.add_parser("models", help="the shipped models: name, channels, folder and model card")
    commands.add_parser("merge", help="rebuild results.json and summary.csv from the records in an output folder "
                                      "(after several processes wrote to it)")
    commands.add_parser("longitudinal", help="compare each subject's sessions with the first: new, persistent and "
                                             "resolved microbleeds, ARIA-H microhemorrhage grade",
                        description="Compare each follow-up session with the subject's baseline in an output folder "
                                    "of `predict` or `bids ... participant` (probability maps are saved there when "
                                    "a subject has two or more sessions). A research measure, not a diagnosis.")
    commands.add_parser("review", help="review the detections in a browser: accept, reject or add microbleeds, "
                                       "decisions kept per rater",
                        description="A local web app over an output folder of `predict` or `bids ... participant`: "
                                    "each rater's decisions go to OUTPUT/reviews/<case>/<rater>.json; the tool's "
                                    "outputs are never changed.")
    commands.add_parser("phantoms", help="write synthetic microbleed phantoms with labels")
    commands.add_parser("train", help="train fold 'all' with nnU-Net v2 on labelled cases")
    commands.add_parser("import-v1", help="convert an nnU-Net v1 3d_fullres model (such as the 2021 "
                                          "MixMicrobleedNet checkpoint) into a model folder for --model")
    commands.add_parser("evaluate", help="VALDO Task 2 measures of predictions against labels")
    for command, subparser in commands.choices.items():
        add_options(subparser, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command == "predict":
        from .runner import options_from, run

        return run(args.input, args.output, options_from(args, "predict"))[0]
    if args.command == "bids":
        return run_bids_app(args)
    if args.command == "dicom2bids":
        return convert_dicom(args.dicom_dir, args.bids_out, args.dicom_rules)
    if args.command == "models":
        return list_models(args.json)
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
    if args.command == "longitudinal":
        from .longitudinal import main as compare_sessions

        return compare_sessions(args.output_dir, args.input, tuple(args.participant_label))
    if args.command == "review":
        from .review.app import main as review

        return review(args.output_dir, args.input, args.rater, args.host, args.port, args.export)
    if args.command == "phantoms":
        from .phantoms import generate

        try:
            generate(args.out, args.n, args.seed, args.cohort, args.raw, args.varied, args.loose_masks,
                     args.superficial, args.small, args.processes or 1)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        return 0
    if args.command == "train":
        from .train import reviewed_training_data, train

        if not args.data and not args.from_reviews:
            log.error("train: give --data DIR or --from-reviews OUTPUT")
            return 2
        data = args.data
        if args.from_reviews:
            data = (args.work or args.out.parent / f"{args.out.name}.nnunet-work") / "reviewed-cases"
            if not reviewed_training_data(args.from_reviews, args.input, data):
                log.error("%s: no reviewed case to train on (a finished review that decided every detection)",
                          args.from_reviews)
                return 2
        try:
            train(data, args.out, args.config, device=args.device, work_dir=args.work, epochs=args.epochs,
                  num_processes=args.processes or 2,
                  iterations_per_epoch=args.iterations_per_epoch, initial_lr=args.initial_lr, channels=tuple(args.channels),
                  init_from=args.init, resume=args.resume, stop_after_minutes=args.stop_after_minutes,
                  foreground_sampling=args.foreground_sampling)
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
