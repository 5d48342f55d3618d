"""Run cases through the stages: load and align → predict → mask → write; one result per case.

Nothing below this module prints or exits: stages raise, and this module turns each case's error
into that case's result while the other cases go on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import DEFAULT_MODEL_DIR, layout
from .cases import Case, CaseError, discover_cases
from .imaging import ChannelStack, image_like, load_case, write_image_atomic
from .lesions import DEFAULT_THRESHOLD, binary_mask
from .model import Model, PredictionSettings

log = logging.getLogger(__name__)


@dataclass
class CaseResult:
    subject: str
    inputs: list[str]
    outputs: list[str] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict:
        """The entry the seed's evalutils processor wrote to results.json."""
        return {
            "outputs": [{"type": "metaio_image", "filename": self.outputs}],
            "inputs": [{"type": "metaio_image", "filename": self.inputs}],
            "error_messages": self.error_messages,
        }


#: The predict stage: a case's aligned channels → its uint8 mask on the T2* grid.
Segmenter = Callable[[ChannelStack], sitk.Image]


def segment(stack: ChannelStack, model: Model, threshold: float = DEFAULT_THRESHOLD) -> sitk.Image:
    probabilities = model.predict_probabilities(stack.array, stack.spacing_zyx)
    return image_like(binary_mask(probabilities, threshold), stack.reference)


def segmenter(model: Model, threshold: float = DEFAULT_THRESHOLD) -> Segmenter:
    return lambda stack: segment(stack, model, threshold)


def run_case(case: Case, segment_case: Segmenter, output_dir: Path) -> CaseResult:
    """Predict one case; an input problem becomes the result's error message, not an exception."""
    result = CaseResult(case.subject, case.input_names)
    started = time.perf_counter()
    try:
        stack = load_case(case)
        log.info("%s: grid %s spacing %s mm; %s", case.subject, stack.reference.GetSize(),
                 tuple(round(s, 3) for s in stack.reference.GetSpacing()),
                 "; ".join(f"{c}: {a}" for c, a in stack.alignment.items()))
        mask = segment_case(stack)
        path = layout.prediction_path(output_dir, case.subject)
        write_image_atomic(mask, path)
        result.outputs.append(str(path.relative_to(output_dir)))
    except CaseError as exc:
        result.error_messages.append(str(exc))
    except Exception as exc:  # one case's unexpected failure must not stop the cohort
        log.exception("%s: unexpected error", case.subject)
        result.error_messages.append(f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - started
    if result.error_messages:
        log.error("%s: failed: %s", case.subject, "; ".join(result.error_messages))
    else:
        log.info("%s: %d microbleed voxels, %s written (%.1f s)", case.subject, int(np.sum(sitk.GetArrayViewFromImage(mask))), result.outputs[0],
                 result.seconds)
    return result


def write_results(results: list[CaseResult], output_dir: Path) -> None:
    """results.json, replaced atomically so a reader never sees half a file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / layout.RESULTS_JSON
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps([r.as_json() for r in results], indent=2))
    os.replace(temporary, path)


def run_cases(cases: list[Case], segment_case: Segmenter, output_dir: Path) -> list[CaseResult]:
    """Every case in turn with the one model; results.json is rewritten after each case."""
    results: list[CaseResult] = []
    for number, case in enumerate(cases, 1):
        log.info("case %d/%d: %s", number, len(cases), case.subject)
        results.append(run_case(case, segment_case, output_dir))
        write_results(results, output_dir)
    failed = sum(bool(r.error_messages) for r in results)
    log.info("%d case(s): %d ok, %d failed", len(results), len(results) - failed, failed)
    return results


def predict_folder(input_dir: Path, output_dir: Path, model_dir: Path = DEFAULT_MODEL_DIR, device: str = "auto",
                   settings: PredictionSettings = PredictionSettings(),
                   threshold: float = DEFAULT_THRESHOLD) -> list[CaseResult]:
    """Find the cases in `input_dir`, open the model once, write masks and results.json."""
    cases = discover_cases(Path(input_dir))
    if not cases:
        log.error("no cases in %s: expected files named %s", input_dir, layout.input_name("<id>", layout.CASE_CHANNEL))
        write_results([], Path(output_dir))
        return []
    log.info("%d case(s) in %s", len(cases), input_dir)
    model = Model(model_dir, device, settings)
    return run_cases(cases, segmenter(model, threshold), Path(output_dir))
