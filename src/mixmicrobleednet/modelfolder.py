"""A model folder: what it needs and what it is, read without PyTorch; the one writer of model folders.

An nnU-Net v2 model folder (plans.json, dataset.json, fold_all/checkpoint_final.pth) declares its
input channels in dataset.json (`channel_names`, in network order); they must be channels the
registry (layout.py) knows, and include the reference channel (T2*), whose grid every output is on.
`train`, `import-v1` and the tests write model folders through `write_model_folder`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import layout

log = logging.getLogger(__name__)

#: The shipped model: $MIXMICROBLEEDNET_MODEL, else weights/ of the source checkout.
DEFAULT_MODEL_DIR = Path(os.environ.get("MIXMICROBLEEDNET_MODEL", Path(__file__).resolve().parents[2] / "weights"))
#: Where Grand-Challenge extracts a model tarball uploaded beside the image.
PLATFORM_MODEL_DIR = Path("/opt/ml/model")
#: plans.json key (ignored by nnU-Net) telling `Model` to aggregate and resample probabilities as
#: nnU-Net v1 did (set by import-v1).
PROBABILITY_AGGREGATION = "mixmicrobleednet_v1_probability_aggregation"


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
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{model_dir}: unreadable plans.json or dataset.json ({type(exc).__name__}: {exc})") from None
    unknown = [c for c in channels if c not in layout.CHANNELS]
    if unknown or layout.REFERENCE_CHANNEL not in channels or len(set(channels)) != len(channels):
        raise ModelError(f"{model_dir / layout.DATASET_JSON}: channel_names {list(channels)} must name distinct "
                         f"channels among {', '.join(layout.CHANNELS)}, {layout.REFERENCE_CHANNEL} included")
    return ModelFolder(model_dir, channels, labels, configurations, model_checksum(model_dir),
                       bool(plans.get(PROBABILITY_AGGREGATION)))


def choose_model_dir(baked_in: Path, mounted: Path = PLATFORM_MODEL_DIR) -> Path:
    """A model folder mounted or extracted at `mounted` (itself, or its one subfolder holding
    plans.json) wins over the weights baked into the image."""
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


def dataset_json(channels: tuple[str, ...], labels: dict[str, int], **extra) -> dict:
    """dataset.json of a model folder (and of an nnU-Net raw dataset) with these channels."""
    return {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
            "file_ending": layout.NIFTI, **extra}


def write_model_folder(out_dir: Path, plans: dict, dataset: dict, checkpoint: dict) -> Path:
    """Write plans.json, dataset.json and the checkpoint (a dict for torch.save), each atomically
    and the checkpoint last: a folder without it is no model folder, so an interrupted write is
    never used."""
    import torch

    from .imaging import atomic_output

    out_dir = Path(out_dir)
    for name, content in ((layout.PLANS_JSON, plans), (layout.DATASET_JSON, dataset)):
        with atomic_output(out_dir / name) as temporary:
            temporary.write_text(json.dumps(content, indent=2))
    with atomic_output(out_dir / layout.CHECKPOINT) as temporary:
        torch.save(checkpoint, temporary)
    return out_dir
