"""Run cases through the stages: load and align → predict → lesions → write; one result per case.

Nothing below this module prints or exits: stages raise, and this module turns each case's error
into that case's result while the other cases go on. The next case is read and aligned in a
background thread while the network works on the current one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import DEFAULT_MODEL_DIR, layout
from .cases import Case, CaseError, discover_cases, uses_platform_interface
from .imaging import ChannelStack, image_like, load_case, write_image_atomic
from .lesions import Lesions, LesionSettings, extract_lesions
from .model import Model, ModelError, PredictionSettings
from .report import write_json_value, write_lesion_table, write_qc_picture, write_results_json, write_summary_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputSettings:
    """What is written per case besides the mask and the lesion table."""

    lesions: LesionSettings = LesionSettings()
    save_probabilities: bool = False
    qc_picture: bool = True


@dataclass
class CaseResult:
    subject: str
    inputs: list[str]
    outputs: list[str] = field(default_factory=list)  # images, relative to the output folder
    error_messages: list[str] = field(default_factory=list)
    microbleed_count: int | None = None
    total_volume_mm3: float | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        """The entry the seed's evalutils processor wrote to results.json."""
        return {
            "outputs": [{"type": "metaio_image", "filename": self.outputs}],
            "inputs": [{"type": "metaio_image", "filename": self.inputs}],
            "error_messages": self.error_messages,
        }

    def as_summary_row(self) -> dict:
        return {"subject": self.subject, "status": "error" if self.error_messages else "ok",
                "message": "; ".join(self.error_messages), "microbleed_count": self.microbleed_count,
                "total_volume_mm3": self.total_volume_mm3, "runtime_s": round(self.seconds, 1)}


#: The predict stage: a case's aligned channels → microbleed probability (float32) on the T2* grid.
Predictor = Callable[[ChannelStack], np.ndarray]


def model_predictor(model: Model) -> Predictor:
    return lambda stack: model.predict_probabilities(stack.array, stack.spacing_zyx)


def loading_model_predictor(model_dir: Path, device: str, prediction: PredictionSettings) -> Predictor:
    """A predictor whose model (PyTorch and nnU-Net imports, weights: seconds) loads in a
    background thread from now on, so that the first case is read meanwhile. Its first call waits
    for the model; a model that cannot be loaded raises ModelError there, which stops the run
    before any mask is written."""
    loader = ThreadPoolExecutor(1, thread_name_prefix="model")
    model = loader.submit(Model, model_dir, device, prediction)
    loader.shutdown(wait=False)
    return lambda stack: model_predictor(model.result())(stack)


@contextmanager
def _stage(result: CaseResult, name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    result.stage_seconds[name] = time.perf_counter() - started
    log.info("%s: %s %.1f s", result.subject, name, result.stage_seconds[name])


def _load_timed(case: Case) -> tuple[ChannelStack, float]:
    started = time.perf_counter()
    return load_case(case), time.perf_counter() - started


def _run_case(case: Case, loaded: Future, predict: Predictor, output_dir: Path,
             settings: OutputSettings = OutputSettings()) -> CaseResult:
    """Predict one case; an input problem becomes the result's error message, not an exception."""
    result = CaseResult(case.subject, case.input_names)
    started = time.perf_counter()
    try:
        stack, result.stage_seconds["read"] = loaded.result()
        log.info("%s: read and aligned in %.1f s (ahead); grid %s spacing %s mm; %s", case.subject,
                 result.stage_seconds["read"], stack.reference.GetSize(),
                 tuple(round(s, 3) for s in stack.reference.GetSpacing()),
                 "; ".join(f"{c}: {a}" for c, a in stack.alignment.items()))
        with _stage(result, "prediction"):
            probabilities = predict(stack)
        with _stage(result, "lesions"):
            lesions = extract_lesions(probabilities, stack.reference, settings.lesions)
        with _stage(result, "write"):
            result.outputs = write_case_outputs(case, stack, probabilities, lesions, output_dir, settings)
        result.microbleed_count, result.total_volume_mm3 = lesions.count, lesions.total_volume_mm3
    except CaseError as exc:
        result.error_messages.append(str(exc))
    except ModelError:
        raise  # no case can be predicted: not this case's error
    except Exception as exc:  # one case's unexpected failure must not stop the cohort
        log.exception("%s: unexpected error", case.subject)
        result.error_messages.append(f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - started
    if result.error_messages:
        log.error("%s: failed: %s", case.subject, "; ".join(result.error_messages))
    else:
        log.info("%s: %d microbleed(s), %.1f mm³ in all; %s written (%.1f s)", case.subject,
                 result.microbleed_count, result.total_volume_mm3, result.outputs[0], result.seconds)
    return result


def write_case_outputs(case: Case, stack: ChannelStack, probabilities: np.ndarray, lesions: Lesions,
                       output_dir: Path, settings: OutputSettings) -> list[str]:
    """Write what the case's layout asks for (its output_paths); return the images written."""
    paths = {kind: output_dir / relative for kind, relative in case.output_paths.items()}
    images = [paths["mask"]]
    write_image_atomic(image_like(lesions.mask, stack.reference), paths["mask"])
    if settings.save_probabilities and "probability" in paths:
        write_image_atomic(image_like(probabilities, stack.reference), paths["probability"])
        images.append(paths["probability"])
    if "lesions" in paths:
        write_lesion_table(lesions, paths["lesions"])
    if settings.qc_picture and "qc" in paths:
        write_qc_picture(paths["qc"], case.subject, stack.reference, lesions, settings.lesions)
    if "count" in paths:
        write_json_value(lesions.count, paths["count"])
    if "total_volume" in paths:
        write_json_value(round(lesions.total_volume_mm3, 3), paths["total_volume"])
    return [str(path.relative_to(output_dir)) for path in images]


def write_reports(results: list[CaseResult], output_dir: Path) -> None:
    """results.json and summary.csv, each replaced atomically so a reader never sees half a file."""
    write_results_json([r.as_json() for r in results], output_dir)
    write_summary_csv([r.as_summary_row() for r in results], output_dir)


def run_cases(cases: list[Case], predict: Predictor, output_dir: Path, settings: OutputSettings = OutputSettings(),
              reports: bool = True) -> list[CaseResult]:
    """Every case in turn with the one model; the reports (results.json, summary.csv; not for a
    Grand-Challenge job, whose outputs are its sockets alone) are rewritten after each case."""
    results: list[CaseResult] = []
    with ThreadPoolExecutor(1, thread_name_prefix="reader") as reader:
        upcoming = reader.submit(_load_timed, cases[0]) if cases else None
        for number, case in enumerate(cases, 1):
            loaded = upcoming
            upcoming = reader.submit(_load_timed, cases[number]) if number < len(cases) else None
            log.info("case %d/%d: %s", number, len(cases), case.subject)
            results.append(_run_case(case, loaded, predict, output_dir, settings))
            if reports:
                write_reports(results, output_dir)
    failed = sum(bool(r.error_messages) for r in results)
    log.info("%d case(s): %d ok, %d failed", len(results), len(results) - failed, failed)
    return results


def predict_folder(input_dir: Path, output_dir: Path, model_dir: Path = DEFAULT_MODEL_DIR, device: str = "auto",
                   prediction: PredictionSettings = PredictionSettings(),
                   settings: OutputSettings = OutputSettings()) -> list[CaseResult]:
    """Find the cases in `input_dir`, open the model once, write masks, tables and reports."""
    cases = discover_cases(Path(input_dir))
    reports = not uses_platform_interface(Path(input_dir))
    if not cases:
        log.error("no cases in %s: expected files named %s", input_dir, layout.input_name("<id>", layout.CASE_CHANNEL))
        write_reports([], Path(output_dir))
        return []
    log.info("%d case(s) in %s (%s layout)", len(cases), input_dir, "seed" if reports else "Grand-Challenge")
    return run_cases(cases, loading_model_predictor(model_dir, device, prediction), Path(output_dir), settings, reports)
