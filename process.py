"""Container entry point: the seed's evalutils processor, delegating every stage to the package.

Reads the seed layout from /input (sub-*_space-*_desc-masked_{T1,T2,T2S}.nii.gz), writes
/output/images/sub-<id>_space-T2S_prediction.nii.gz and /output/results.json. The model is opened
once at start-up; the exit code is non-zero when any case failed or none was found.
Options after the image name: --device auto|cuda|cpu, --fast (no mirroring).
"""

import argparse
import logging
import sys
from pathlib import Path

from evalutils import SegmentationAlgorithm
from pandas import DataFrame

import SimpleITK

from mixmicrobleednet import DEFAULT_MODEL_DIR, Model, PredictionSettings, layout
from mixmicrobleednet.cases import InputFolderError, discover_cases
from mixmicrobleednet.imaging import ChannelStack
from mixmicrobleednet.model import ModelError
from mixmicrobleednet.pipeline import run_cases, segment, write_results

INPUT_DIR = Path("/input")
OUTPUT_DIR = Path("/output")


class MixMicrobleedNet(SegmentationAlgorithm):
    def __init__(self, input_dir: Path = INPUT_DIR, output_dir: Path = OUTPUT_DIR, model_dir: Path = DEFAULT_MODEL_DIR,
                 device: str = "auto", settings: PredictionSettings = PredictionSettings()):
        super().__init__(input_path=input_dir, output_path=output_dir / layout.IMAGES_DIR,
                         output_file=output_dir / layout.RESULTS_JSON, validators={})
        self.output_dir = output_dir
        self.model = Model(model_dir, device, settings)

    def load(self):
        # Our discovery instead of evalutils' loaders: an unreadable T1 still makes a case, which
        # then gets its own error message instead of being skipped silently.
        self._cases[self._index_key] = DataFrame({"case": discover_cases(self._input_path)})

    def process_cases(self, file_loader_key=None):
        cases = list(self._cases[self._index_key]["case"])
        self.results = run_cases(cases, lambda stack: self.predict(input_image=stack), self.output_dir)
        self._case_results = [r.as_json() for r in self.results]

    def predict(self, *, input_image: ChannelStack) -> SimpleITK.Image:
        """One case's channels, aligned on the T2* grid → its microbleed mask on that grid."""
        return segment(input_image, self.model)

    def save(self):
        write_results(self.results, self.output_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="MixMicrobleedNet container: /input → /output")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--fast", action="store_true", help="no mirroring test-time augmentation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        algorithm = MixMicrobleedNet(device=args.device, settings=PredictionSettings(use_mirroring=not args.fast))
    except ModelError as exc:
        logging.error("%s", exc)
        return 2
    try:
        algorithm.process()
    except InputFolderError as exc:
        logging.error("%s", exc)
        return 2
    if not algorithm.results:
        logging.error("no cases found in %s", INPUT_DIR)
        return 1
    return 1 if any(r.error_messages for r in algorithm.results) else 0


if __name__ == "__main__":
    sys.exit(main())
