"""Container entry point: the seed's evalutils processor, delegating every stage to the package.

Reads /input in either layout: the seed's (sub-*_space-*_desc-masked_{T1,T2,T2S}.nii.gz), written to
/output/images/sub-<id>_space-T2S_{prediction.nii.gz,lesions.csv,qc.png}, /output/results.json and
/output/summary.csv; or today's Grand-Challenge interface (/input/inputs.json and one .mha/.tif per
input socket under /input/images/<slug>/), written to its output sockets: the mask as
/output/images/<slug>/output.mha and the count and total volume as JSON values (slugs:
mixmicrobleednet/sockets.toml). A model folder at /opt/ml/model wins over the baked-in weights.
The model is opened once, while the first case is read; the exit code is non-zero when any case
failed or none was found. Options after the image name are those of `mixmicrobleednet predict`
(--device, --fast, --threshold, --min-size-mm3, --save-probabilities, --no-qc).
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from evalutils import SegmentationAlgorithm
from pandas import DataFrame

from mixmicrobleednet import DEFAULT_MODEL_DIR, PredictionSettings, layout
from mixmicrobleednet.cases import InputFolderError, discover_cases, uses_platform_interface
from mixmicrobleednet.cli import add_prediction_options, settings_from_args
from mixmicrobleednet.imaging import ChannelStack
from mixmicrobleednet.model import ModelError, choose_model_dir
from mixmicrobleednet.pipeline import OutputSettings, loading_model_predictor, run_cases, write_reports

INPUT_DIR = Path("/input")
OUTPUT_DIR = Path("/output")


class MixMicrobleedNet(SegmentationAlgorithm):
    def __init__(self, input_dir: Path = INPUT_DIR, output_dir: Path = OUTPUT_DIR, model_dir: Path = DEFAULT_MODEL_DIR,
                 device: str = "auto", prediction: PredictionSettings = PredictionSettings(),
                 settings: OutputSettings = OutputSettings()):
        super().__init__(input_path=input_dir, output_path=output_dir / layout.IMAGES_DIR,
                         output_file=output_dir / layout.RESULTS_JSON, validators={})
        self.output_dir = output_dir
        self.platform = uses_platform_interface(input_dir)
        self.settings = settings
        self.predict_probabilities = loading_model_predictor(model_dir, device, prediction)

    def load(self):
        # Our discovery instead of evalutils' loaders: an unreadable T1 still makes a case, which
        # then gets its own error message instead of being skipped silently.
        self._cases[self._index_key] = DataFrame({"case": discover_cases(self._input_path)})

    def process_cases(self, file_loader_key=None):
        cases = list(self._cases[self._index_key]["case"])
        self.results = run_cases(cases, lambda stack: self.predict(input_image=stack), self.output_dir, self.settings,
                                 reports=not self.platform)
        self._case_results = [r.as_json() for r in self.results]

    def predict(self, *, input_image: ChannelStack) -> np.ndarray:
        """One case's channels, aligned on the T2* grid → microbleed probability on that grid
        (the pipeline turns it into the mask, the lesion table and the QC picture)."""
        return self.predict_probabilities(input_image)

    def save(self):
        if not self.platform:
            write_reports(self.results, self.output_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="MixMicrobleedNet container: /input → /output")
    add_prediction_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    prediction, settings = settings_from_args(args)
    algorithm = MixMicrobleedNet(model_dir=choose_model_dir(DEFAULT_MODEL_DIR), device=args.device,
                                 prediction=prediction, settings=settings)
    try:
        algorithm.process()
    except (InputFolderError, ModelError) as exc:
        logging.error("%s", exc)
        return 2
    if not algorithm.results:
        logging.error("no cases found in %s", INPUT_DIR)
        return 1
    return 1 if any(r.error_messages for r in algorithm.results) else 0


if __name__ == "__main__":
    sys.exit(main())
