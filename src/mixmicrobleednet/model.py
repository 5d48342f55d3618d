"""Open an nnU-Net v2 model folder once and predict microbleed probabilities with it."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FOLD = "all"
CHECKPOINT = "checkpoint_final.pth"


class ModelError(Exception):
    """The model folder or the device cannot be used: nothing can be predicted."""


def resolve_device(requested: str):
    """`auto` → CUDA when present, else CPU; `cuda` without a GPU is an error, not a fallback."""
    import torch

    if requested not in ("auto", "cuda", "cpu"):
        raise ModelError(f"unknown device {requested!r}: use auto, cuda or cpu")
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ModelError("--device cuda was asked for, but PyTorch sees no CUDA GPU "
                         "(CPU build of torch, no driver, or the container was started without --gpus)")
    if requested == "cpu" or not has_cuda:
        reason = "asked for" if requested == "cpu" else "no CUDA GPU visible"
        log.info("device: cpu (%s; %d torch threads)", reason, torch.get_num_threads())
        return torch.device("cpu")
    log.info("device: cuda (%s, %s)", torch.cuda.get_device_name(0),
             "asked for" if requested == "cuda" else "GPU found")
    return torch.device("cuda")


#: Where Grand-Challenge extracts a model tarball uploaded beside the image.
PLATFORM_MODEL_DIR = Path("/opt/ml/model")


def choose_model_dir(baked_in: Path, mounted: Path = PLATFORM_MODEL_DIR) -> Path:
    """A model folder mounted or extracted at `mounted` (itself, or its one subfolder holding
    plans.json) wins over the weights baked into the image."""
    try:
        candidates = [mounted, *sorted(p for p in mounted.iterdir() if p.is_dir())] if mounted.is_dir() else []
    except OSError as exc:
        log.warning("cannot read %s (%s): using the baked-in model", mounted, exc.strerror)
        candidates = []
    found = [c for c in candidates if (c / "plans.json").is_file()]
    if found:
        log.info("model: %s (provided at %s, used instead of the baked-in %s)", found[0], mounted, baked_in)
        return found[0]
    log.info("model: baked-in %s (nothing at %s)", baked_in, mounted)
    return baked_in


def model_checksum(model_dir: Path) -> str:
    """SHA-256 over the files that define the model: plans, dataset and checkpoint."""
    digest = hashlib.sha256()
    for path in (model_dir / "plans.json", model_dir / "dataset.json", model_dir / f"fold_{FOLD}" / CHECKPOINT):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class PredictionSettings:
    """The paper's defaults: 3d_fullres-style sliding window, fold all, mirroring, step 0.5."""

    use_mirroring: bool = True
    tile_step_size: float = 0.5


class Model:
    """An nnUNetPredictor with the weights loaded; create once per process, reuse for every case."""

    def __init__(self, model_dir: Path, device: str = "auto", settings: PredictionSettings = PredictionSettings()):
        model_dir = Path(model_dir)
        for required in ("plans.json", "dataset.json", f"fold_{FOLD}/{CHECKPOINT}"):
            if not (model_dir / required).is_file():
                raise ModelError(f"{model_dir} is not an nnU-Net v2 model folder: {required} is missing")
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        started = time.perf_counter()
        self.model_dir = model_dir
        self.device = resolve_device(device)
        self.settings = settings
        self.checksum = model_checksum(model_dir)
        self.predictor = nnUNetPredictor(
            tile_step_size=settings.tile_step_size, use_gaussian=True, use_mirroring=settings.use_mirroring,
            perform_everything_on_device=self.device.type == "cuda", device=self.device, verbose=False,
            verbose_preprocessing=False, allow_tqdm=False,
        )
        try:
            self.predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(FOLD,), checkpoint_name=CHECKPOINT)
        except Exception as exc:  # nnU-Net raises many kinds (KeyError, RuntimeError, pickle errors)
            raise ModelError(f"cannot load the model in {model_dir}: {type(exc).__name__}: {exc}") from exc
        log.info("model loaded once from %s (sha256 %s…, mirroring %s, %.1f s)", model_dir, self.checksum[:12],
                 "on" if settings.use_mirroring else "off", time.perf_counter() - started)

    def predict_probabilities(self, channels: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
        """Microbleed probability (float32) on the input grid for a (channel, z, y, x) array."""
        _, probabilities = self.predictor.predict_single_npy_array(
            channels, {"spacing": list(spacing_zyx)}, None, None, True)
        return np.asarray(probabilities[1], dtype=np.float32)
