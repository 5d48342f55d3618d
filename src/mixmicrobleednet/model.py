"""Open an nnU-Net v2 model folder once and predict microbleed probabilities with it: the predict
stage's settings, a model's preprocessing and the model, on nnunet_glue's predictor."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .device import cpu_has_bfloat16, resolve_device, usable_cpus
from .modelfolder import ModelError, ModelFolder, read_model_folder
from .options import CPU_RUNTIMES, PRECISIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PredictionSettings:
    """The paper's defaults: 3d_fullres-style sliding window, fold all, mirroring, step 0.5."""

    use_mirroring: bool = True
    tile_step_size: float = 0.5
    #: Sliding-window tiles per network call; None: 4. On the CPU PyTorch runs small 3D convolutions
    #: of a single tile on a slow path (no oneDNN), so 4 tiles at once take about the time of one
    #: (tests/test_model_speed.py keeps the masks equal); a GPU, which nnU-Net feeds one tile per
    #: call, also gets each tile's mirrored passes in the same call (fewer when its memory runs out).
    tiles_per_batch: int | None = None
    #: The network's arithmetic on the CPU: float32 (default; nnU-Net's logits to 1e-4) or bfloat16
    #: (torch.autocast: faster only where the CPU has bfloat16 instructions, AMX or AVX-512 BF16; it
    #: moves logits and can change masks, measured in models/phantom-t1-t2-t2s/MODEL_CARD.md). On a GPU nnU-Net's
    #: float16 autocast runs whatever this says.
    precision: str = "float32"
    #: What runs the network on the CPU: openvino-checked (the default: openvino-accurate's network in
    #: bfloat16 where the CPU has bfloat16 instructions, and every tile near a voxel that may be a
    #: microbleed's again in float32, giving openvino-accurate's masks and probabilities from 0.01 up,
    #: cpu_network.RECHECK_ABOVE_LOGODDS; elsewhere openvino-accurate), openvino-accurate
    #: (cpu_network.openvino_network in float32 with the instance normalisations on a plain layout:
    #: PyTorch's accuracy), openvino (the same with OpenVINO's own normalisation: faster, logits within
    #: about 1e-3 of PyTorch's) or torch (cpu_network.cpu_network); docs/benchmarks.md measures each.
    #: --precision bfloat16 and a GPU run PyTorch.
    cpu_runtime: str = CPU_RUNTIMES[0]


@dataclass
class PreprocessedCase:
    """A case as the network reads it (nnU-Net's preprocessed (channel, z, y, x) array) and what
    brings its output back to the input grid."""

    data: np.ndarray
    properties: dict
    seconds: float
    ahead: bool = False  # preprocessed in the reader thread, while the model loaded or the network ran


class Preprocessing:
    """A model's preprocessing, from its folder alone (plans, dataset.json and the configuration its
    checkpoint names), without the network: so that a case can be preprocessed while the weights
    load or the previous case runs through the network. The same plans nnU-Net's predictor reads."""

    def __init__(self, folder: ModelFolder):
        try:
            # PyTorch and nnU-Net load with the first model, not with the package (and so does
            # nnunet_glue's version check, whose error is then the model's)
            from .nnunet_glue import PlansPreprocessing

            self.nnunet = PlansPreprocessing(folder.path)
        except Exception as exc:  # as Model: any failure to read the folder is the model's
            raise ModelError(f"cannot load the model in {folder.path}: {type(exc).__name__}: {exc}") from exc

    def preprocess(self, channels: np.ndarray, spacing_zyx: tuple[float, float, float],
                   ahead: bool = False) -> PreprocessedCase:
        """A (channel, z, y, x) array on the input grid, preprocessed as nnU-Net's run_case_npy."""
        started = time.perf_counter()
        data, properties = self.nnunet.preprocess(channels, spacing_zyx)
        return PreprocessedCase(data, properties, time.perf_counter() - started, ahead)


class Model:
    """An nnUNetPredictor with the weights loaded; create once per process, reuse for every case.
    `preprocessing`: the folder's Preprocessing when it was made already (else made here)."""

    def __init__(self, model: Path | ModelFolder, device: str = "auto", settings: PredictionSettings = PredictionSettings(),
                 preprocessing: Preprocessing | None = None):
        started = time.perf_counter()
        self.folder = model if isinstance(model, ModelFolder) else read_model_folder(Path(model))
        #: The last case predicted: seconds of its parts, whether it was preprocessed ahead, its tiles and
        #: passes per tile (into the record: benchmarks read records, not logs).
        self.last_case: dict = {}
        try:
            self._load(device, settings, preprocessing)
        except ModelError:
            raise
        except Exception as exc:  # nnU-Net and PyTorch raise many kinds (KeyError, RuntimeError, pickle errors)
            raise ModelError(f"cannot load the model in {self.folder.path}: {type(exc).__name__}: {exc}") from exc
        log.info("model loaded once from %s (sha256 %s…, channels %s, mirroring %s, %s, %.1f s)", self.folder.path,
                 self.folder.checksum[:12], ", ".join(self.folder.channels), "on" if settings.use_mirroring else "off",
                 f"{settings.precision} on {self.cpu_runtime}" if self.device.type == "cpu" else "float16 autocast",
                 time.perf_counter() - started)

    def _load(self, device: str, settings: PredictionSettings, preprocessing: Preprocessing | None) -> None:
        import torch

        from .cpu_network import RECHECK_ABOVE_LOGODDS, cpu_network, openvino_network, openvino_networks
        from .nnunet_glue import open_predictor

        if settings.precision not in PRECISIONS:  # before the weights are read
            raise ModelError(f"unknown precision {settings.precision!r}: use {' or '.join(PRECISIONS)}")
        if settings.cpu_runtime not in CPU_RUNTIMES:
            raise ModelError(f"unknown CPU runtime {settings.cpu_runtime!r}: use {' or '.join(CPU_RUNTIMES)}")
        self.device = resolve_device(device)
        self.settings = settings
        #: What runs the network: openvino or torch on the CPU (cuda on a GPU).
        self.cpu_runtime = "cuda" if self.device.type == "cuda" else \
            "torch" if settings.precision == "bfloat16" else settings.cpu_runtime
        tiles_per_batch = settings.tiles_per_batch or 4
        self.preprocessing = preprocessing or Preprocessing(self.folder)  # its plans build the network
        self.predictor = open_predictor(self.folder.path, self.preprocessing.nnunet, self.device, tiles_per_batch,
                                        settings.tile_step_size, settings.use_mirroring,
                                        mirror_in_batch=self.device.type == "cuda")
        if self.cpu_runtime == "openvino-checked" and (self.folder.imported_from_v1 or not cpu_has_bfloat16()):
            # v1's sliding window (probabilities, not log-odds) has no recheck
            log.info("openvino-checked runs as openvino-accurate, float32 alone: %s", "a model imported from "
                     "nnU-Net v1" if self.folder.imported_from_v1 else "this CPU has no bfloat16 instructions "
                     "(AMX or AVX-512 BF16)")
            self.cpu_runtime = "openvino-accurate"
        if self.cpu_runtime.startswith("openvino"):
            tile_shape = (len(self.folder.channels), *self.predictor.configuration_manager.patch_size)
            threads = min(usable_cpus(), torch.get_num_threads())
            if self.cpu_runtime == "openvino-checked":
                self.predictor.network, self.predictor.recheck_network = openvino_networks(
                    self.predictor.network, tile_shape, threads, accurate=True, streams=tiles_per_batch,
                    precisions=("bf16", "f32"))
                self.predictor.recheck_above = RECHECK_ABOVE_LOGODDS
            else:
                self.predictor.network = openvino_network(self.predictor.network, tile_shape, threads,
                                                          accurate=self.cpu_runtime == "openvino-accurate",
                                                          streams=tiles_per_batch)
            self.predictor.tile_memory_format = torch.contiguous_format
        elif self.cpu_runtime == "torch":
            if settings.precision == "bfloat16" and not cpu_has_bfloat16():
                log.warning("this CPU has no bfloat16 instructions (AMX or AVX-512 BF16): the network runs "
                            "about 100x slower in bfloat16 than in float32 here (measured on an AVX2 EPYC)")
            self.predictor.network, self.predictor.tile_memory_format = cpu_network(
                self.predictor.network, settings.precision)
        self.v1_probabilities = self.folder.imported_from_v1
        if self.v1_probabilities:
            # A model imported from nnU-Net v1, which averaged softmax probabilities over tiles and
            # mirrorings: with the softmax inside the network every tile and mirrored pass gives
            # probabilities, which the predictor's v1_sliding_window weights and averages as v1 did.
            self.predictor.network = torch.nn.Sequential(self.predictor.network, torch.nn.Softmax(dim=1))

    def predict_probabilities(self, channels: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
        """Microbleed probability (float32) on the input grid for a (channel, z, y, x) array:
        preprocessed (Preprocessing.preprocess), then predict_preprocessed."""
        return self.predict_preprocessed(self.preprocessing.preprocess(channels, spacing_zyx))

    def predict_preprocessed(self, case: PreprocessedCase) -> np.ndarray:
        """Microbleed probability (float32) on the input grid of a preprocessed case.

        nnU-Net's predict_single_npy_array step by step (same preprocessing, same sliding window),
        except that one map instead of both classes' is resampled to the input grid: the microbleed
        log-odds (CMB logit minus background logit; the resampling is linear, so its sign is
        nnU-Net's argmax and its sigmoid nnU-Net's softmax), or for a model imported from v1 the
        microbleed probability, which v1 resampled."""
        import torch

        predictor, seconds = self.predictor, {}
        started = time.perf_counter()
        data = torch.from_numpy(case.data)
        output = predictor.v1_sliding_window(data) if self.v1_probabilities else \
            predictor.predict_sliding_window_return_logits(data).to("cpu")
        seconds["network"] = time.perf_counter() - started
        started = time.perf_counter()
        to_input_grid = self.preprocessing.nnunet.to_input_grid
        if self.v1_probabilities:
            probability = to_input_grid(output[1].float().numpy()[None], case.properties, outside=0.0)
        else:
            probability = to_input_grid((output[1] - output[0]).float().numpy()[None], case.properties, -np.inf)
            _sigmoid_in_place(probability)
        del output
        seconds["resample"] = time.perf_counter() - started
        self.last_case = {"preprocess_s": case.seconds, "preprocessed_ahead": case.ahead, "network_s": seconds["network"],
                          "resample_s": seconds["resample"], "tiles": predictor.tiles_last_case,
                          "tiles_rechecked": predictor.tiles_rechecked_last_case,
                          "passes_per_tile": predictor.passes_per_tile()}
        log.info("preprocess %.1f s%s, network %.1f s (%d tiles x %d passes%s), resample to the input grid %.1f s",
                 case.seconds, " (ahead)" if case.ahead else "", seconds["network"], predictor.tiles_last_case,
                 predictor.passes_per_tile(), f", {predictor.tiles_rechecked_last_case} again in float32"
                 if predictor.recheck_network is not None else "", seconds["resample"])
        return probability


def _sigmoid_in_place(values: np.ndarray) -> None:
    """1 / (1 + exp(-x)) without a second volume in memory."""
    np.negative(values, out=values)
    with np.errstate(over="ignore"):  # exp(+inf) = inf → probability 0, as intended
        np.exp(values, out=values)
    values += 1
    np.reciprocal(values, out=values)
