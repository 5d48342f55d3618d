"""Container entry point: the seed's evalutils processor over the package's one composition root
(mixmicrobleednet.runner), which finds the cases, loads the model once and runs every stage.

Reads /input in either layout: the seed's (sub-<id>[_ses-<id>]_space-<space>_desc-masked_<channel>
.nii[.gz]), written to /output/images/<case>_{prediction.nii.gz,lesions.csv,qc.png}, a record per
case in /output/records/, /output/results.json and /output/summary.csv; or today's Grand-Challenge
interface (/input/inputs.json and one .mha/.tif per input socket under /input/images/<slug>/),
written to its output sockets: the mask as /output/images/<slug>/output.mha and the count and
total volume as JSON values (slugs: mixmicrobleednet/sockets.toml). A model folder at
/opt/ml/model wins over the baked-in models (of which each case gets the one that fits it) unless
--model is given (a baked-in model's name or a mounted folder). Exit code 0 when every case
finished, 1 when a case failed or none was found, 2 when the run could not start (model, input or
output folder). Options after the image name are those of `mixmicrobleednet predict` but -i/-o.

The BIDS-App form, `IMAGE BIDS_DIR OUTPUT_DIR participant|group [options]`, is `mixmicrobleednet
bids` (the same code; the model as above unless --model is given).
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from evalutils import SegmentationAlgorithm
from pandas import DataFrame

from mixmicrobleednet import layout
from mixmicrobleednet.cli import run_bids_app
from mixmicrobleednet.imaging import ChannelStack
from mixmicrobleednet.modelfolder import DEFAULT_MODEL, ModelFolder, choose_model_dir
from mixmicrobleednet.options import add_options
from mixmicrobleednet.pipeline import WithStage
from mixmicrobleednet.runner import Run, RunError, exit_code, options_from, prepare_run

INPUT_DIR = Path("/input")
OUTPUT_DIR = Path("/output")


class MixMicrobleedNet(SegmentationAlgorithm):
    """evalutils' load → process_cases → save, each step handed to the prepared run."""

    def __init__(self, run: Run):
        super().__init__(input_path=run.input_dir, output_path=run.output_dir / layout.IMAGES_DIR,
                         output_file=run.output_dir / layout.RESULTS_JSON, validators={})
        self.run = run
        self.results = []

    def load(self):
        # The run's discovery instead of evalutils' loaders: an unreadable T2* still makes a case,
        # which then gets its own error message instead of being skipped silently.
        self._cases[self._index_key] = DataFrame({"case": self.run.cases})

    def process_cases(self, file_loader_key=None):
        # this predict calls the run's own, so the run still loads and preprocesses ahead for it
        self.results = self.run.execute(WithStage(self.run.predictor,
                                                  lambda stack, model: self.predict(input_image=stack, model=model)))

    def predict(self, *, input_image: ChannelStack, model: ModelFolder) -> np.ndarray:
        """One case's channels, aligned on the T2* grid → microbleed probability on that grid with
        the case's model (the pipeline turns it into the mask, the lesion table, the QC picture and
        the record)."""
        return self.run.predictor.predict(input_image, model)

    def save(self):
        pass  # each case's record and the merged results.json / summary.csv are written as it finishes


def bids_app(argv: list[str]) -> int:
    """BIDS_DIR OUTPUT_DIR participant|group [options]: the BIDS App convention."""
    parser = argparse.ArgumentParser(description="MixMicrobleedNet BIDS App")
    add_options(parser, "bids", model=choose_model_dir(DEFAULT_MODEL))
    return run_bids_app(parser.parse_args(argv))


def main(argv=None, input_dir: Path = INPUT_DIR, output_dir: Path = OUTPUT_DIR) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if argv and not argv[0].startswith("-"):
        return bids_app(argv)
    parser = argparse.ArgumentParser(description="MixMicrobleedNet container: /input → /output "
                                                 "(or BIDS_DIR OUTPUT_DIR participant|group: the BIDS App)")
    add_options(parser, "container", model=None)  # not given: a model at /opt/ml/model, else the baked-in ones
    args = parser.parse_args(argv)
    try:
        run = prepare_run(input_dir, output_dir,
                          options_from(args, "container", model=args.model or choose_model_dir(DEFAULT_MODEL)))
        algorithm = MixMicrobleedNet(run)
        algorithm.process()
    except RunError as exc:
        logging.error("%s", exc)
        return 2
    return exit_code(run, algorithm.results)


if __name__ == "__main__":
    sys.exit(main())
