"""Run cases through the stages: load and align → predict → lesions → regions → write outputs → record.

Nothing below this module prints or exits: stages raise, and this module turns each case's error
into that case's result (and record) while the other cases go on. While the network works on a
case, the next one is read and aligned in one background thread and the previous one's lesions,
outputs and record are made in another.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import records, regions
from .bids import sidecars
from .brain import BrainSettings
from .cases import Case, CaseError
from .imaging import ChannelStack, load_case
from .lesions import WORLD_COLUMNS, extract_lesions
from .mimics import MarkJudge
from .model import Model, PredictionSettings, PreprocessedCase, Preprocessing
from .modelfolder import ModelError, ModelFolder
from .report import OutputSettings, write_case_outputs

log = logging.getLogger(__name__)

#: What the record keeps of each component the edge rule set aside.
NEAR_EDGE_COLUMNS = [*WORLD_COLUMNS, "volume_mm3", "max_probability"]
MIMIC_COLUMNS = [*NEAR_EDGE_COLUMNS, "calibrated_probability"]


@dataclass
class CaseResult:
    case_id: str
    subject: str
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path relative to the output folder
    error_messages: list[str] = field(default_factory=list)
    microbleed_count: int | None = None
    total_volume_mm3: float | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # finished by an earlier run (--resume)
    registrations: dict[str, dict] = field(default_factory=dict)  # channel -> its registration onto the T2*
    brain_mask: dict = field(default_factory=dict)  # how the brain mask was found (BrainMask.as_record)
    regions: dict | None = None  # where the microbleeds are (regions.locate_lesions), with regions on
    edge_rule: dict = field(default_factory=dict)  # the case's edge margin and what it set aside
    mimic_check: dict = field(default_factory=dict)  # the model's mimic check's cut and what it set aside
    network: dict = field(default_factory=dict)  # preprocessed ahead, sliding-window tiles, passes per tile


class ModelPredictor:
    """The predict stage (a case's aligned channels → microbleed probability on the T2* grid) with
    a model that loads in a background thread from now on (PyTorch and nnU-Net imports, weights:
    seconds), so that the first case is read and preprocessed meanwhile (`prepare`, in the reader
    thread), as is each next case while the network runs. Its first call waits for the model; any
    failure to load raises ModelError there, which stops the run before any mask is written."""

    def __init__(self, folder: ModelFolder, device: str, prediction: PredictionSettings):
        self.folder = folder
        self._lock = threading.Lock()
        self._preprocessing: Preprocessing | None = None
        self._ahead: dict[int, tuple[ChannelStack, PreprocessedCase]] = {}  # id(stack) -> the stack, preprocessed
        loader = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._model = loader.submit(lambda: Model(folder, device, prediction, self.preprocessing))
        loader.shutdown(wait=False)

    @property
    def preprocessing(self) -> Preprocessing:
        with self._lock:  # made once, by whichever thread asks first (the model's or the reader's)
            if self._preprocessing is None:
                self._preprocessing = Preprocessing(self.folder)
            return self._preprocessing

    @property
    def model(self) -> Model:
        return self._model.result()

    def settle(self) -> None:
        """Wait until the loading thread has ended, loaded or not (so that it outlives no run)."""
        wait([self._model])

    @property
    def device(self) -> str:
        return str(self.model.device) if self._model.done() and not self._model.exception() else "not loaded"

    def prepare(self, stack: ChannelStack) -> float:
        """Preprocess a case ahead of its call (reader thread); kept until that call takes it.
        Returns the seconds it took."""
        case = self.preprocessing.preprocess(stack.array, stack.spacing_zyx, ahead=True)
        with self._lock:
            self._ahead[id(stack)] = (stack, case)
        return case.seconds

    def __call__(self, stack: ChannelStack) -> np.ndarray:
        with self._lock:
            held, case = self._ahead.pop(id(stack), (None, None))
        if held is not stack:
            case = self.preprocessing.preprocess(stack.array, stack.spacing_zyx)
        return self.model.predict_preprocessed(case)


class Predictor(Protocol):
    """The predict stage: a case's aligned channels and its model → microbleed probability (float32)
    on the T2* grid; models load from `start` on, a case may be preprocessed ahead in the reader
    thread (`prepare`: its seconds, None where `predict` preprocesses), `device` and `last_case` (the
    network's part of the last predict: Model.last_case, empty where not measured) are for the records."""

    def start(self, model: ModelFolder) -> None: ...
    def prepare(self, stack: ChannelStack, model: ModelFolder) -> float | None: ...
    def predict(self, stack: ChannelStack, model: ModelFolder) -> np.ndarray: ...
    def last_case(self, model: ModelFolder) -> dict: ...
    def device(self, model: ModelFolder) -> str: ...
    def settle(self) -> None: ...


class ModelPredictors:
    """The run's predictor: one ModelPredictor per model folder, each loaded once, when a case first needs it."""

    def __init__(self, device: str, prediction: PredictionSettings):
        self._device, self._prediction = device, prediction
        self._loaded: dict[Path, ModelPredictor] = {}

    def _of(self, model: ModelFolder) -> ModelPredictor:
        if model.path not in self._loaded:
            self._loaded[model.path] = ModelPredictor(model, self._device, self._prediction)
        return self._loaded[model.path]

    def start(self, model: ModelFolder) -> None:
        self._of(model)

    def prepare(self, stack: ChannelStack, model: ModelFolder) -> float:
        return self._of(model).prepare(stack)

    def predict(self, stack: ChannelStack, model: ModelFolder) -> np.ndarray:
        return self._of(model)(stack)

    def last_case(self, model: ModelFolder) -> dict:
        return self._of(model).model.last_case

    def device(self, model: ModelFolder) -> str:
        return self._of(model).device

    def settle(self) -> None:
        """A model still loading when every case failed before it: its thread ends with the run."""
        for predictor in self._loaded.values():
            predictor.settle()


@dataclass(frozen=True)
class FunctionPredictor:
    """A predict stage that is a plain function (tests, benchmarks): nothing loads or is prepared ahead."""

    function: Callable[[ChannelStack, ModelFolder], np.ndarray]

    def start(self, model: ModelFolder) -> None:
        pass

    def prepare(self, stack: ChannelStack, model: ModelFolder) -> None:
        return None

    def predict(self, stack: ChannelStack, model: ModelFolder) -> np.ndarray:
        return self.function(stack, model)

    def last_case(self, model: ModelFolder) -> dict:
        return {}

    def device(self, model: ModelFolder) -> str:
        return "unknown"

    def settle(self) -> None:
        pass


@dataclass(frozen=True)
class WithStage:
    """A predictor whose predict stage is handed to `stage`, which calls the predictor's own predict
    (process.py: evalutils' `predict` as the model stage): loading, preprocessing ahead and the device
    stay the predictor's."""

    predictor: Predictor
    stage: Callable[[ChannelStack, ModelFolder], np.ndarray]

    def start(self, model: ModelFolder) -> None:
        self.predictor.start(model)

    def prepare(self, stack: ChannelStack, model: ModelFolder) -> float | None:
        return self.predictor.prepare(stack, model)

    def predict(self, stack: ChannelStack, model: ModelFolder) -> np.ndarray:
        return self.stage(stack, model)

    def last_case(self, model: ModelFolder) -> dict:
        return self.predictor.last_case(model)

    def device(self, model: ModelFolder) -> str:
        return self.predictor.device(model)

    def settle(self) -> None:
        self.predictor.settle()


@dataclass(frozen=True)
class CaseRun:
    """What every case of a run shares: how it is predicted (each case with its own model), the
    settings, where outputs go."""

    predictor: Predictor
    output_dir: Path
    prediction: PredictionSettings = PredictionSettings()
    settings: OutputSettings = OutputSettings()
    records: bool = True  # records and merged reports (not for a Grand-Challenge job: its sockets alone)
    merge_each: bool = True  # merge the reports after every case (BIDS: the group level merges, once)
    resume: bool = False
    register: bool = True  # T1/T2 not on the T2* grid: registered rigidly (else placed by their headers)
    brain: BrainSettings = BrainSettings()  # brain masks: found in the scans, given or extracted

    @property
    def settings_record(self) -> dict:
        return {"prediction": asdict(self.prediction), "output": asdict(self.settings), "registration": self.register,
                "brain_mask": self.brain.as_record()}


@contextmanager
def _stage(result: CaseResult, name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    result.stage_seconds[name] = time.perf_counter() - started
    log.info("%s: %s %.1f s", result.case_id, name, result.stage_seconds[name])


def _load_timed(case: Case, run: CaseRun) -> tuple[ChannelStack, dict[str, float]]:
    """The reader thread's work for one case: read and align, then preprocess for its model; the
    seconds of each."""
    started = time.perf_counter()
    stack = load_case(case, case.model.channels, case.model.describe(), run.register, run.brain)
    seconds = {"read": time.perf_counter() - started}
    preprocess = run.predictor.prepare(stack, case.model)
    if preprocess is not None:
        seconds["preprocess"] = preprocess
    return stack, seconds


@contextmanager
def _case_errors(case: Case, result: CaseResult) -> Iterator[None]:
    """An input problem becomes the result's error message, not an exception; what stops every
    case (the model, the atlas) goes on up."""
    try:
        yield
    except CaseError as exc:
        result.error_messages.append(str(exc))
    except (ModelError, regions.AtlasError):
        raise  # no case can be predicted: not this case's error
    except Exception as exc:  # one case's unexpected failure must not stop the cohort
        log.exception("%s: unexpected error", case.case_id)
        result.error_messages.append(f"{type(exc).__name__}: {exc}")


@dataclass
class _Predicted:
    """A case between its network call (the main thread) and its outputs (the finisher thread)."""

    result: CaseResult
    started: float
    fingerprint: list[dict]  # the inputs as they were when the case began
    stack: ChannelStack | None = None
    probabilities: np.ndarray | None = None


def _predict_case(case: Case, loaded: Future, run: CaseRun) -> _Predicted:
    """The network's part of a case: its channels as the reader left them, then its probabilities."""
    predicted = _Predicted(CaseResult(case.case_id, case.subject), time.perf_counter(), records.input_fingerprint(case))
    result = predicted.result
    with _case_errors(case, result):
        stack, seconds = loaded.result()
        result.stage_seconds.update(seconds)
        result.registrations = {channel: r.as_record() for channel, r in stack.registrations.items()}
        result.brain_mask = stack.brain.as_record()
        for channel, registration in stack.registrations.items():
            result.stage_seconds[f"registration {channel}"] = registration.seconds
        if stack.brain.mask is not None:
            result.stage_seconds["brain mask"] = stack.brain.seconds
        log.info("%s: read and aligned in %.1f s (ahead); grid %s spacing %s mm; %s", case.case_id,
                 result.stage_seconds["read"], stack.reference.GetSize(),
                 tuple(round(s, 3) for s in stack.reference.GetSpacing()),
                 "; ".join(f"{c}: {a}" for c, a in stack.alignment.items()))
        log.info("%s: brain mask: %s, %.0f ml (%.1f s)", case.case_id, stack.brain.source, stack.brain.volume_ml,
                 stack.brain.seconds)
        with _stage(result, "prediction"):
            probabilities = run.predictor.predict(stack, case.model)
        network = run.predictor.last_case(case.model)
        if network:
            result.stage_seconds |= {"preprocess": network["preprocess_s"], "network": network["network_s"],
                                     "resample": network["resample_s"]}
            result.network = {key: network[key] for key in ("preprocessed_ahead", "tiles", "passes_per_tile",
                                                             "tiles_rechecked")}
        predicted.stack, predicted.probabilities = stack, probabilities
    return predicted


def _finish_case(case: Case, predicted: _Predicted, run: CaseRun) -> CaseResult:
    """The rest of a case once the network is done (while it runs on the next case): lesions, regions,
    outputs; then its record and the merged reports."""
    result, stack, probabilities = predicted.result, predicted.stack, predicted.probabilities
    if probabilities is not None:
        with _case_errors(case, result):
            _outputs(case, result, stack, probabilities, run)
    result.seconds = time.perf_counter() - predicted.started
    if result.error_messages:
        log.error("%s: failed: %s", case.case_id, "; ".join(result.error_messages))
    else:
        log.info("%s: %d microbleed(s), %.1f mm³ in all; %s written (%.1f s)", case.case_id,
                 result.microbleed_count, result.total_volume_mm3, result.outputs["mask"], result.seconds)
    if run.records:
        records.write_record(run.output_dir, case, _record(case, result, run, predicted.fingerprint,
                                                            run.predictor.device(case.model)))
        if run.merge_each:
            records.merge(run.output_dir)
    return result


def _outputs(case: Case, result: CaseResult, stack: ChannelStack, probabilities: np.ndarray, run: CaseRun) -> None:
    rule = run.settings.lesions.for_brain(stack.brain.extracted, case.model.extracted_brain_edge_margin_mm)
    check = case.model.mimic_check
    with _stage(result, "lesions"):
        brain = stack.brain_region() if rule.margin_mm or check else None
        judge = check and MarkJudge.on_scan(check, stack.reference, brain)
        lesions = extract_lesions(probabilities, stack.reference, rule, brain, judge)
    # What the edge rule and the mimic check set aside stays on record, where a reader can look at it.
    result.edge_rule = {"edge_margin_mm": rule.margin_mm, "near_edge": lesions.with_world(lesions.near_edge)[
        NEAR_EDGE_COLUMNS].round(2).to_dict("records")}
    result.mimic_check = {"cut": check and check.cut, "mimics": lesions.with_world(lesions.mimics)[
        MIMIC_COLUMNS].round(2).to_dict("records")}
    if len(lesions.near_edge):
        log.info("%s: %d component(s) set aside, centre within %g mm of the brain mask's edge (in the record)",
                 case.case_id, len(lesions.near_edge), rule.margin_mm)
    if len(lesions.mimics):
        log.info("%s: %d component(s) set aside as mimics, calibrated probability under %g (in the record)",
                 case.case_id, len(lesions.mimics), check.cut)
    if run.settings.regions:
        with _stage(result, "regions"):
            lesions, result.regions = regions.locate_lesions(stack, lesions,
                                                             regions.load_atlas(regions.atlas_folder()))
        log.log(logging.WARNING if "error" in result.regions else logging.INFO, "%s: %s", case.case_id,
                regions.describe(result.regions))
    with _stage(result, "write"):
        result.outputs = write_case_outputs(case, stack, probabilities, lesions, run.output_dir,
                                            replace(run.settings, lesions=rule), sidecars(case, rule))
    result.microbleed_count, result.total_volume_mm3 = lesions.count, lesions.total_volume_mm3


def _record(case: Case, result: CaseResult, run: CaseRun, fingerprint: list[dict], device: str) -> records.CaseRecord:
    return records.CaseRecord(
        case_id=case.case_id, subject=case.subject, session=case.session,
        status="error" if result.error_messages else "ok", error_messages=result.error_messages, inputs=fingerprint,
        model={"name": case.model.name, "path": str(case.model.path), "sha256": case.model.checksum,
               "channels": list(case.model.channels)},
        settings=run.settings_record, registrations=result.registrations, brain_mask=result.brain_mask,
        edge_rule=result.edge_rule, mimic_check=result.mimic_check, regions=result.regions, outputs=result.outputs, network=result.network,
        microbleed_count=result.microbleed_count,
        total_volume_mm3=None if result.total_volume_mm3 is None else round(result.total_volume_mm3, 3),
        device=device, versions=records.versions(), host=socket.gethostname(),
        stage_seconds={k: round(v, 2) for k, v in result.stage_seconds.items()},
        runtime_s=round(result.seconds, 1), finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _already_done(cases: list[Case], run: CaseRun) -> dict[str, CaseResult]:
    """The cases whose record says they were finished with the same inputs, model and settings."""
    done = {}
    for case in cases:
        record = records.read_record(records.record_path(run.output_dir, case))
        reason = records.finished_before(record, records.input_fingerprint(case), case.model.checksum,
                                         run.settings_record, run.output_dir)
        if reason:
            log.info("%s: skipped, %s (--resume)", case.case_id, reason)
            done[case.case_id] = CaseResult(case.case_id, case.subject, record["outputs"], [],
                                            record["microbleed_count"], record["total_volume_mm3"], skipped=True)
    return done


def run_cases(cases: list[Case], run: CaseRun) -> list[CaseResult]:
    """Every case in turn with its model; after each, its record and the merged reports."""
    done = _already_done(cases, run) if run.resume and run.records else {}
    todo = [case for case in cases if case.case_id not in done]
    results = dict(done)
    for model in {case.model.path: case.model for case in todo}.values():
        run.predictor.start(model)  # each loads (once) while the first case is read and preprocessed
    # Three cases at most in memory: one read ahead, one in the network, one finishing.
    with ThreadPoolExecutor(1, thread_name_prefix="reader") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="finisher") as finisher:
        upcoming = reader.submit(_load_timed, todo[0], run) if todo else None
        finishing: Future | None = None
        for number, case in enumerate(todo, 1):
            loaded = upcoming
            upcoming = reader.submit(_load_timed, todo[number], run) if number < len(todo) else None
            log.info("case %d/%d: %s, %s", number, len(todo), case.case_id, case.model.describe())
            predicted = _predict_case(case, loaded, run)
            if finishing is not None:
                finishing.result()  # the previous case's outputs, or what stops the run
            finishing = finisher.submit(_finish_case, case, predicted, run)
            results[case.case_id] = predicted.result
        if finishing is not None:
            finishing.result()
    if run.records and run.merge_each and not todo:
        records.merge(run.output_dir)
    ordered = [results[case.case_id] for case in cases]
    failed = sum(bool(r.error_messages) for r in ordered)
    log.info("%d case(s): %d ok (%d finished before), %d failed", len(ordered), len(ordered) - failed, len(done), failed)
    return ordered
