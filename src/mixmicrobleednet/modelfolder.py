"""A model folder: what it needs and what it is, read without PyTorch; the shipped models by name.

An nnU-Net v2 model folder (plans.json, dataset.json, fold_all/checkpoint_final.pth) declares its
input channels in dataset.json (`channel_names`, in network order); they must be channels the
registry (layout.py) knows, and include the reference channel (T2*), whose grid every output is on.
The shipped models are the model folders under one folder (models/ of the checkout, which the wheel
carries as the package's models/, and so does the image), each named by its folder and described by
its MODEL_CARD.md;
`--model auto` gives each case the shipped model with the most channels that the case has.
Model folders are written by train.py (`write_model_folder`), for training and import-v1 alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from . import layout

log = logging.getLogger(__name__)

#: Where the shipped models are (one model folder each) when $MIXMICROBLEEDNET_MODELS does not say: the
#: package's models/ in an installed wheel (pyproject.toml maps the checkout's models/ there), else models/
#: of the source checkout (an editable install: setuptools' editable finder does not map a folder without
#: __init__.py).
MODELS_VARIABLE = "MIXMICROBLEEDNET_MODELS"
PACKAGE_MODELS_DIR = Path(__file__).resolve().parent / "models"
CHECKOUT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
#: --model's value for "per case, the shipped model whose channels the case has".
AUTO = "auto"
#: --model's default: $MIXMICROBLEEDNET_MODEL (a shipped model's name or a model folder), else AUTO.
DEFAULT_MODEL = os.environ.get("MIXMICROBLEEDNET_MODEL", AUTO)
#: Where Grand-Challenge extracts a model tarball uploaded beside the image.
PLATFORM_MODEL_DIR = Path("/opt/ml/model")
#: plans.json key (ignored by nnU-Net) telling `Model` to aggregate and resample probabilities as
#: nnU-Net v1 did (set by import-v1).
PROBABILITY_AGGREGATION = "mixmicrobleednet_v1_probability_aggregation"
#: plans.json key (ignored by nnU-Net): the edge margin (mm) where the tool extracted the brain itself,
#: as the model's card measured it (lesions.LesionSettings.for_brain); written by hand after the card's
#: validation draw, since it is chosen after training.
EDGE_MARGIN = "mixmicrobleednet_extracted_brain_edge_margin_mm"
#: The edge margin for a model that does not say: an extraction's mask reaches past the brain onto dura
#: and bone (most at the skull base), dark on T2* beside the bright brain like a microbleed; chosen for
#: the v1 models on raw phantoms (benchmarks/edge_rule.py).
EXTRACTED_BRAIN_EDGE_MARGIN_MM = 4.0
#: plans.json key (ignored by nnU-Net): the model's mimic check (MimicCheck), a logistic regression on
#: features of each mark's T2* (mimics.py), fitted after training on the model's marks of validation draws
#: (benchmarks/mark_features.py --write); a model without one keeps every mark.
MIMIC_CHECK = "mixmicrobleednet_mimic_check"
#: The features a mimic check may weigh, as mimics.mark_features names them.
MIMIC_FEATURES = ("log_extent_ratio", "blobness", "log_elongation", "log_radius_mm")


@dataclass(frozen=True)
class MimicCheck:
    """The probability that a mark is a microbleed, from its T2* features; marks under `cut` are set aside."""

    coefficients: dict[str, float]  # feature (MIMIC_FEATURES) -> weight
    intercept: float
    cut: float
    fitted_on: str = ""  # which marks, for the record and the card

    def probability(self, features: dict[str, float]) -> float:
        logit = self.intercept + sum(weight * features[name] for name, weight in self.coefficients.items())
        if logit < 0:  # the logistic function without overflow: a feature may be far out (blobness of a flat Hessian)
            odds = math.exp(logit)
            return odds / (1.0 + odds)
        return 1.0 / (1.0 + math.exp(-logit))

    def as_plans(self) -> dict:
        return {"coefficients": self.coefficients, "intercept": self.intercept, "cut": self.cut,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_plans(cls, value: dict) -> MimicCheck:
        check = cls({str(k): float(v) for k, v in value["coefficients"].items()}, float(value["intercept"]),
                    float(value["cut"]), str(value.get("fitted_on", "")))
        unknown = set(check.coefficients) - set(MIMIC_FEATURES)
        if unknown or not check.coefficients or not 0.0 < check.cut < 1.0:
            raise ValueError(f"{MIMIC_CHECK}: coefficients must weigh features among {', '.join(MIMIC_FEATURES)} "
                             f"(got {sorted(check.coefficients)}) and the cut lie in (0, 1) (got {check.cut})")
        return check


class ModelError(Exception):
    """The model folder or the device cannot be used: nothing can be predicted."""


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    channels: tuple[str, ...]  # network order
    labels: dict[str, int]
    configurations: tuple[str, ...]  # in plans.json; the checkpoint says which one it was trained as
    checksum: str  # SHA-256 over plans, dataset and checkpoint
    imported_from_v1: bool
    extracted_brain_edge_margin_mm: float = EXTRACTED_BRAIN_EDGE_MARGIN_MM
    mimic_check: MimicCheck | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def describe(self) -> str:
        """How case messages name the model: its folder's name (the same in a container and on the
        host; the log gives the full path and checksum) and what it needs."""
        return f"model {self.name} (channels {', '.join(self.channels)})"


def model_checksum(model_dir: Path) -> str:
    """SHA-256 over the files that define the model: plans, dataset and checkpoint."""
    digest = hashlib.sha256()
    for name in (layout.PLANS_JSON, layout.DATASET_JSON, layout.CHECKPOINT):
        digest.update((model_dir / name).read_bytes())
    return digest.hexdigest()


def read_model_folder(model_dir: Path) -> ModelFolder:
    """Check a model folder and read what it declares; ModelError says what is wrong."""
    model_dir = Path(model_dir)
    for required in (layout.PLANS_JSON, layout.DATASET_JSON, layout.CHECKPOINT):
        if not (model_dir / required).is_file():
            raise ModelError(f"{model_dir} is not an nnU-Net v2 model folder: {required} is missing")
    try:
        plans = json.loads((model_dir / layout.PLANS_JSON).read_text())
        dataset = json.loads((model_dir / layout.DATASET_JSON).read_text())
        names = dataset["channel_names"]
        channels = tuple(str(names[key]) for key in sorted(names, key=int))
        labels = {str(k): int(v) for k, v in dataset["labels"].items()}
        configurations = tuple(plans["configurations"])
        edge_margin_mm = float(plans.get(EDGE_MARGIN, EXTRACTED_BRAIN_EDGE_MARGIN_MM))
        mimic_check = MimicCheck.from_plans(plans[MIMIC_CHECK]) if MIMIC_CHECK in plans else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{model_dir}: unreadable plans.json or dataset.json ({type(exc).__name__}: {exc})") from None
    unknown = [c for c in channels if c not in layout.CHANNELS]
    if unknown or layout.REFERENCE_CHANNEL not in channels or len(set(channels)) != len(channels):
        raise ModelError(f"{model_dir / layout.DATASET_JSON}: channel_names {list(channels)} must name distinct "
                         f"channels among {', '.join(layout.CHANNELS)}, {layout.REFERENCE_CHANNEL} included")
    if not edge_margin_mm >= 0:
        raise ModelError(f"{model_dir / layout.PLANS_JSON}: {EDGE_MARGIN} must be 0 mm or more: got {edge_margin_mm}")
    return ModelFolder(model_dir, channels, labels, configurations, model_checksum(model_dir),
                       bool(plans.get(PROBABILITY_AGGREGATION)), edge_margin_mm, mimic_check)


def models_folder() -> Path:
    """The folder of the shipped models ($MIXMICROBLEEDNET_MODELS, read now; else the installed package's,
    else the checkout's)."""
    if MODELS_VARIABLE in os.environ:
        return Path(os.environ[MODELS_VARIABLE])
    return PACKAGE_MODELS_DIR if PACKAGE_MODELS_DIR.is_dir() or not CHECKOUT_MODELS_DIR.is_dir() else CHECKOUT_MODELS_DIR


def shipped_models(models_dir: Path | None = None) -> dict[str, ModelFolder]:
    """Name -> model folder, for every model folder directly under `models_dir` (default: models_folder())."""
    try:
        folders = sorted(p for p in Path(models_dir or models_folder()).iterdir() if (p / layout.PLANS_JSON).is_file())
    except OSError:
        folders = []
    return {folder.name: read_model_folder(folder) for folder in folders}


@dataclass(frozen=True)
class ModelChoice:
    """The models a run may use: the one given (--model NAME|DIR), or every shipped one (auto),
    of which a case gets the one with the most channels that it has."""

    models: tuple[ModelFolder, ...]  # most channels first
    auto: bool

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel some model reads, in the registry's order."""
        return tuple(c for c in layout.CHANNELS if any(c in m.channels for m in self.models))

    def choose(self, available: set[str]) -> ModelFolder:
        """The model for a case with these channels; when none fits, the one needing the fewest
        (reading the case then names the missing file)."""
        return next((m for m in self.models if set(m.channels) <= available), self.models[-1])

    def describe(self) -> str:
        if not self.auto:
            return self.models[0].describe()
        return f"per case the shipped model that fits ({'; '.join(m.describe() for m in self.models)})"


def resolve_models(spec: str | Path = DEFAULT_MODEL, models_dir: Path | None = None) -> ModelChoice:
    """--model's value: `auto`, a shipped model's name, or a model folder; ModelError says what is wrong."""
    models_dir = models_dir or models_folder()
    if str(spec) == AUTO:
        shipped = shipped_models(models_dir)
        if not shipped:
            raise ModelError(f"--model auto: no model folders in {models_dir} (set {MODELS_VARIABLE}, or give "
                             "--model a model folder)")
        return ModelChoice(tuple(sorted(shipped.values(), key=lambda m: -len(m.channels))), auto=True)
    path = Path(spec)
    if path.is_dir():
        return ModelChoice((read_model_folder(path),), auto=False)
    shipped = shipped_models(models_dir)
    if str(spec) in shipped:
        return ModelChoice((shipped[str(spec)],), auto=False)
    raise ModelError(f"--model {spec}: neither a model folder nor a shipped model (shipped, in {models_dir}: "
                     f"{', '.join(shipped) or 'none'}; or {AUTO})")


def choose_model_dir(baked_in: str | Path, mounted: Path = PLATFORM_MODEL_DIR) -> str | Path:
    """A model folder mounted or extracted at `mounted` (itself, or its one subfolder holding
    plans.json) wins over the models baked into the image (`baked_in`: --model's value)."""
    try:
        candidates = [mounted, *sorted(p for p in mounted.iterdir() if p.is_dir())] if mounted.is_dir() else []
    except OSError as exc:
        log.warning("cannot read %s (%s): using the baked-in model", mounted, exc.strerror)
        candidates = []
    found = [c for c in candidates if (c / layout.PLANS_JSON).is_file()]
    if found:
        log.info("model: %s (provided at %s, used instead of the baked-in %s)", found[0], mounted, baked_in)
        return found[0]
    log.info("model: baked-in %s (nothing at %s)", baked_in, mounted)
    return baked_in
