"""The composition root: from an input folder, an output folder and options to a finished run.

The CLI (`mixmicrobleednet predict|bids`), the container's process.py and the Python API all start
runs here: the model folders are read (--model: one, or every shipped one for `auto`), the output
folder is checked, the input layout is detected once (inputs.json: a Grand-Challenge job;
dataset_description.json: a BIDS dataset, written as a BIDS derivatives dataset; DICOM files: their
series converted into a BIDS dataset inside the output folder, then run as one; else the seed's
folder), the cases are found, chosen (participants, sessions, shard), each given its model (the one
with the most channels that the case has) and run; each model loads once, when a case needs it.
Whatever stops the whole run (model folder, input folder, output folder) is a RunError: one
message, exit code 2, no case written.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import layout, options, records, regions
from .brain import BrainSettings
from .bids import bids_cases, is_bids_dataset, write_derivatives_description
from .dicom import looks_like_dicom_folder
from .cases import (Case, InputFolderError, has_series, platform_case, platform_channels, seed_cases, select_cases,
                    uses_platform_interface)
from .model import PredictionSettings
from .modelfolder import DEFAULT_MODEL, ModelChoice, ModelError, resolve_models
from .pipeline import CaseResult, CaseRun, ModelPredictors, Predictor, run_cases
from .report import OutputSettings

log = logging.getLogger(__name__)

#: Exit codes: 0 every case finished; 1 a case failed or none was found; 2 the run could not start.
EXIT_OK, EXIT_CASE_FAILED, EXIT_RUN_FAILED = 0, 1, 2


#: The input layouts, told apart by prepare_run.
SEED, PLATFORM, BIDS, DICOM = "seed", "Grand-Challenge", "BIDS", "DICOM"


class RunError(Exception):
    """The run cannot start or go on: nothing, or nothing more, can be predicted."""


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    model: str | Path = DEFAULT_MODEL  # --model: a model folder, a shipped model's name, or auto
    device: str = "auto"
    prediction: PredictionSettings = PredictionSettings()
    output: OutputSettings = OutputSettings()
    resume: bool = False
    shard: tuple[int, int] | None = None  # (K, N), 1-based
    participants: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    register: bool = True  # T1/T2 not on the T2* grid: rigid registration (False: their headers alone)
    brain: BrainSettings = BrainSettings()  # brain masks: found, given or extracted
    dicom_rules: Path | None = None  # a site's DICOM rule table, read before the built-in one


def options_from(args: argparse.Namespace, command: str, **fixed) -> RunOptions:
    """A run command's parsed options as the run's settings (options.OPTIONS says which field each
    fills); `fixed` sets fields the caller decides (the container's model)."""
    return options.build(RunOptions, options.settings_values(args, command) | fixed)


def check_output_folder(output_dir: Path) -> None:
    """Create the output folder and write a file in it now, not after the first case's network."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise RunError(f"cannot write to the output folder {output_dir}: {exc.strerror or exc} "
                       f"(it must be writable by user id {os.getuid()})") from None


@dataclass
class Run:
    input_dir: Path
    output_dir: Path
    options: RunOptions
    models: ModelChoice
    input_layout: str  # SEED, PLATFORM, BIDS or DICOM
    cases: list[Case] = field(default_factory=list)  # each with its model
    selected: int = 0  # cases of the chosen participants and sessions, before sharding
    predictor: ModelPredictors = field(init=False, repr=False)  # the run's models, each loaded once

    def __post_init__(self):
        self.predictor = ModelPredictors(self.options.device, self.options.prediction)

    @property
    def platform(self) -> bool:
        """A Grand-Challenge job: sockets in, sockets out, no records or reports."""
        return self.input_layout == PLATFORM

    @property
    def empty_shard(self) -> bool:
        """More shards than cases: this one has none, which is no failure."""
        return not self.cases and self.selected > 0

    def execute(self, predictor: Predictor | None = None) -> list[CaseResult]:
        """Run the cases with the run's predictor, or `predictor` in its place (pipeline.WithStage,
        pipeline.FunctionPredictor)."""
        if self.empty_shard:
            log.info("shard %d/%d: none of the %d case(s) falls to it", *self.options.shard, self.selected)
        elif not self.cases:
            wanted = " ".join([*self.options.participants, *self.options.sessions])
            expected = layout.bids_image_name("<label>", None, layout.REFERENCE_CHANNEL) if self.input_layout in (BIDS, DICOM) \
                else layout.input_name(layout.case_stem("<id>"), layout.REFERENCE_CHANNEL)
            log.error("no cases in %s%s: expected files named %s", self.input_dir, f" for {wanted}" if wanted else "",
                      expected)
        if not self.cases:
            if self.input_layout == SEED:
                records.merge(self.output_dir)
            return []
        # The model starts loading only when a case is left to predict (not when --resume finds all done).
        # A Grand-Challenge job's sockets have no place for regions: not computed.
        output = replace(self.options.output, regions=False) if self.platform else self.options.output
        run = CaseRun(predictor or self.predictor, self.output_dir, self.options.prediction, output,
                      records=not self.platform, merge_each=self.input_layout == SEED, resume=self.options.resume,
                      register=self.options.register, brain=self.options.brain)
        try:
            return run_cases(self.cases, run)
        except (ModelError, regions.AtlasError) as exc:
            raise RunError(str(exc)) from None
        finally:
            run.predictor.settle()


def prepare_run(input_dir: Path, output_dir: Path, options: RunOptions = RunOptions()) -> Run:
    """Everything before the first case: model folders, output folder, layout, cases and their models."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    try:
        models = resolve_models(options.model)
    except ModelError as exc:
        raise RunError(str(exc)) from None
    check_output_folder(output_dir)
    if options.device == "cuda":  # no GPU: stop now, not after the first case is read
        from .device import resolve_device

        try:
            resolve_device("cuda")
        except ModelError as exc:
            raise RunError(str(exc)) from None
    input_layout = PLATFORM if uses_platform_interface(input_dir) else BIDS if is_bids_dataset(input_dir) \
        else DICOM if looks_like_dicom_folder(input_dir) else SEED
    if options.output.regions and input_layout != PLATFORM:
        try:
            regions.check_atlas(regions.atlas_folder())
        except regions.AtlasError as exc:
            raise RunError(str(exc)) from None
    try:
        if input_layout == PLATFORM:  # its sockets say which model fits; then only that model's are needed
            model = models.choose(platform_channels(input_dir))
            cases = [replace(platform_case(input_dir, model.channels), model=model)]
        elif input_layout in (BIDS, DICOM):
            bids_dir = input_dir if input_layout == BIDS else _converted(input_dir, output_dir, options.dicom_rules)
            cases = bids_cases(bids_dir, models.channels, options.participants)
            write_derivatives_description(output_dir, bids_dir)
        else:
            cases = seed_cases(input_dir)
    except InputFolderError as exc:
        raise RunError(str(exc)) from None
    selected = cases if input_layout == PLATFORM else select_cases(cases, options.participants, options.sessions)
    if input_layout != PLATFORM and has_series(selected) and not options.output.save_probabilities:
        # `longitudinal` (and the BIDS group level) reads both visits' probability maps.
        log.info("two or more sessions of a subject: probability maps saved for the comparison of visits")
        options = replace(options, output=replace(options.output, save_probabilities=True))
    chosen = selected if input_layout == PLATFORM else select_cases(selected, shard=options.shard)
    chosen = [case if case.model else replace(case, model=models.choose(case.given_channels())) for case in chosen]
    log.info("%d case(s) in %s (%s layout)%s; %s", len(cases), input_dir, input_layout,
             f", {len(chosen)} chosen" if len(chosen) != len(cases) else "", models.describe())
    if models.auto:
        for name, count in Counter(case.model.name for case in chosen).items():
            log.info("model %s for %d case(s)", name, count)
    return Run(input_dir, output_dir, options, models, input_layout, chosen, len(selected))


def _converted(dicom_dir: Path, output_dir: Path, site_rules: Path | None) -> Path:
    """The DICOM folder's series as a BIDS dataset in the output folder (series converted before are kept)."""
    from .dicom import DicomError, dicom_to_bids

    bids_dir = output_dir / layout.DICOM_CONVERTED_DIR
    try:
        dicom_to_bids(dicom_dir, bids_dir, site_rules)
    except DicomError as exc:  # the site's rule table
        raise RunError(str(exc)) from None
    return bids_dir


def run(input_dir: Path, output_dir: Path, options: RunOptions = RunOptions()) -> tuple[int, list[CaseResult]]:
    """A whole run; (exit code, results). The one place that turns outcomes into exit codes."""
    try:
        prepared = prepare_run(input_dir, output_dir, options)
        results = prepared.execute()
    except RunError as exc:
        log.error("%s", exc)
        return EXIT_RUN_FAILED, []
    return exit_code(prepared, results), results


def exit_code(prepared: Run, results: list[CaseResult]) -> int:
    if not results:
        return EXIT_OK if prepared.empty_shard else EXIT_CASE_FAILED
    return EXIT_CASE_FAILED if any(r.error_messages for r in results) else EXIT_OK
