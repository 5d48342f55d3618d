"""Open an nnU-Net v2 model folder once and predict microbleed probabilities with it."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from . import layout
from .modelfolder import ModelError, ModelFolder, read_model_folder
from .options import PRECISIONS
from .preprocessing import crop_to_nonzero, resample_to_shape

log = logging.getLogger(__name__)


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its affinity (docker run --cpuset-cpus), capped by a cgroup
    v2 CPU quota (docker run --cpus, rounded up)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to read
    return cpus


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
        # PyTorch starts a thread per core of the host; under a CPU quota (docker run --cpus)
        # the surplus threads only wait for each other.
        cpus = usable_cpus()
        if cpus < torch.get_num_threads():
            torch.set_num_threads(cpus)
        log.info("device: cpu (%s; %d torch threads)", reason, torch.get_num_threads())
        return torch.device("cpu")
    log.info("device: cuda (%s, %s)", torch.cuda.get_device_name(0),
             "asked for" if requested == "cuda" else "GPU found")
    return torch.device("cuda")


@dataclass(frozen=True, kw_only=True)
class PredictionSettings:
    """The paper's defaults: 3d_fullres-style sliding window, fold all, mirroring, step 0.5."""

    use_mirroring: bool = True
    tile_step_size: float = 0.5
    #: Sliding-window tiles per network call; None: 4 on the CPU, 1 (as nnU-Net) on a GPU. On the
    #: CPU PyTorch runs small 3D convolutions of a single tile on a slow path (no oneDNN), so 4
    #: tiles at once take about the time of one (tests/test_model_speed.py keeps the masks equal).
    tiles_per_batch: int | None = None
    #: The network's arithmetic on the CPU: float32 (default; nnU-Net's logits to 1e-4) or bfloat16
    #: (torch.autocast: faster only where the CPU has bfloat16 instructions, AMX or AVX-512 BF16; it
    #: moves logits and can change masks, measured in models/phantom-t1-t2-t2s/MODEL_CARD.md). On a GPU nnU-Net's
    #: float16 autocast runs whatever this says.
    precision: str = "float32"




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
        import torch
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        try:
            checkpoint = torch.load(folder.path / layout.CHECKPOINT, map_location="cpu", weights_only=False)
            self.plans = PlansManager(json.loads((folder.path / layout.PLANS_JSON).read_text()))
            self.configuration = self.plans.get_configuration(checkpoint["init_args"]["configuration"])
            self.dataset_json = json.loads((folder.path / layout.DATASET_JSON).read_text())
            self.preprocessor = self.configuration.preprocessor_class(verbose=False)
        except Exception as exc:  # as Model: any failure to read the folder is the model's
            raise ModelError(f"cannot load the model in {folder.path}: {type(exc).__name__}: {exc}") from exc
        # _default_preprocess takes DefaultPreprocessor's steps (3D); a model with another preprocessor runs its own.
        self.default = type(self.preprocessor) is DefaultPreprocessor and len(self.configuration.spacing) == 3
        self.resample_data, self.resample_probabilities = (_resampling(self.configuration, k)
                                                           for k in ("data", "probabilities"))

    def preprocess(self, channels: np.ndarray, spacing_zyx: tuple[float, float, float],
                   ahead: bool = False) -> PreprocessedCase:
        """A (channel, z, y, x) array on the input grid, preprocessed as nnU-Net's run_case_npy."""
        started = time.perf_counter()
        if self.default:
            data, properties = self._default_preprocess(channels, spacing_zyx)
        else:
            data, _, properties = self.preprocessor.run_case_npy(
                channels, None, {"spacing": list(spacing_zyx)}, self.plans, self.configuration, self.dataset_json)
        return PreprocessedCase(data, properties, time.perf_counter() - started, ahead)

    def _default_preprocess(self, channels: np.ndarray, spacing_zyx) -> tuple[np.ndarray, dict]:
        """nnU-Net's DefaultPreprocessor.run_case_npy without a segmentation: transpose, crop to the
        nonzero box, z-score inside the brain, resample to the model's spacing; the crop and the
        resampling from .preprocessing (same values, less work; channels resampled in parallel)."""
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

        plans, configuration = self.plans, self.configuration
        data = channels.astype(np.float32).transpose([0, *[axis + 1 for axis in plans.transpose_forward]])
        spacing = [spacing_zyx[axis] for axis in plans.transpose_forward]
        properties = {"spacing": list(spacing_zyx), "shape_before_cropping": data.shape[1:]}
        data, seg, properties["bbox_used_for_cropping"] = crop_to_nonzero(data)
        properties["shape_after_cropping_and_before_resampling"] = data.shape[1:]
        target_spacing = configuration.spacing
        new_shape = compute_new_shape(data.shape[1:], spacing, target_spacing)
        data = self.preprocessor._normalize(data, seg, configuration, plans.foreground_intensity_properties_per_channel)
        return self.resample_data(data, new_shape, spacing, target_spacing), properties

    def to_input_grid(self, values: np.ndarray, properties: dict, outside: float) -> np.ndarray:
        """As nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape: resample one
        (1, z, y, x) map to the cropped input shape, put it into the uncropped volume (`outside`
        the brain box: background), undo the transpose."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        input_spacing = [properties["spacing"][i] for i in self.plans.transpose_forward]
        resampled = self.resample_probabilities(
            values, properties["shape_after_cropping_and_before_resampling"], self.configuration.spacing, input_spacing)
        full = np.full(properties["shape_before_cropping"], outside, np.float32)
        full = insert_crop_into_image(full, np.asarray(resampled[0], np.float32), properties["bbox_used_for_cropping"])
        return np.ascontiguousarray(full.transpose(self.plans.transpose_backward))


class Model:
    """An nnUNetPredictor with the weights loaded; create once per process, reuse for every case.
    `preprocessing`: the folder's Preprocessing when it was made already (else made here)."""

    def __init__(self, model: Path | ModelFolder, device: str = "auto", settings: PredictionSettings = PredictionSettings(),
                 preprocessing: Preprocessing | None = None):
        started = time.perf_counter()
        self.folder = model if isinstance(model, ModelFolder) else read_model_folder(Path(model))
        try:
            self._load(device, settings)
        except ModelError:
            raise
        except Exception as exc:  # nnU-Net and PyTorch raise many kinds (KeyError, RuntimeError, pickle errors)
            raise ModelError(f"cannot load the model in {self.folder.path}: {type(exc).__name__}: {exc}") from exc
        self.preprocessing = preprocessing or Preprocessing(self.folder)
        log.info("model loaded once from %s (sha256 %s…, channels %s, mirroring %s, %s, %.1f s)", self.folder.path,
                 self.folder.checksum[:12], ", ".join(self.folder.channels), "on" if settings.use_mirroring else "off",
                 settings.precision if self.device.type == "cpu" else "float16 autocast",
                 time.perf_counter() - started)

    def _load(self, device: str, settings: PredictionSettings) -> None:
        if settings.precision not in PRECISIONS:  # before the weights are read
            raise ModelError(f"unknown precision {settings.precision!r}: use {' or '.join(PRECISIONS)}")
        model_dir = self.folder.path
        self.device = resolve_device(device)
        self.settings = settings
        tiles_per_batch = settings.tiles_per_batch or (1 if self.device.type == "cuda" else 4)
        self.predictor = _batched_tile_predictor_class()(
            tiles_per_batch, tile_step_size=settings.tile_step_size, use_gaussian=True,
            use_mirroring=settings.use_mirroring, perform_everything_on_device=self.device.type == "cuda",
            device=self.device, verbose=False, verbose_preprocessing=False, allow_tqdm=False,
        )
        self.predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(layout.FOLD,),
                                                            checkpoint_name=layout.CHECKPOINT_NAME)
        # Fold `all` is one set of weights: put it into the network once, not again for every
        # case as nnU-Net's predict_logits_from_preprocessed_data does.
        self.predictor.network.load_state_dict(self.predictor.list_of_parameters[0])
        if self.device.type == "cpu":
            if settings.precision == "bfloat16" and not _cpu_has_bfloat16():
                log.warning("this CPU has no bfloat16 instructions (AMX or AVX-512 BF16): the network runs "
                            "about 100x slower in bfloat16 than in float32 here (measured on an AVX2 EPYC)")
            self.predictor.network, self.predictor.tile_memory_format = _cpu_network(
                self.predictor.network, settings.precision)
        self.v1_probabilities = self.folder.imported_from_v1
        if self.v1_probabilities:
            # A model imported from nnU-Net v1, which averaged softmax probabilities over tiles and
            # mirrorings: with the softmax inside the network every tile and mirrored pass gives
            # probabilities, which _v1_sliding_window weights and averages as v1 did.
            import torch

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
        output = self._v1_sliding_window(data) if self.v1_probabilities else \
            predictor.predict_sliding_window_return_logits(data).to("cpu")
        seconds["network"] = time.perf_counter() - started
        started = time.perf_counter()
        to_input_grid = self.preprocessing.to_input_grid
        if self.v1_probabilities:
            probability = to_input_grid(output[1].float().numpy()[None], case.properties, outside=0.0)
        else:
            probability = to_input_grid((output[1] - output[0]).float().numpy()[None], case.properties, -np.inf)
            _sigmoid_in_place(probability)
        del output
        seconds["resample"] = time.perf_counter() - started
        passes = 2 ** len(predictor.allowed_mirroring_axes or ()) if predictor.use_mirroring else 1
        log.info("preprocess %.1f s%s, network %.1f s (%d tiles x %d passes), resample to the input grid %.1f s",
                 case.seconds, " (ahead)" if case.ahead else "", seconds["network"], predictor.tiles_last_case,
                 passes, seconds["resample"])
        return probability

    def _v1_sliding_window(self, data):
        """nnU-Net v1's tiled prediction: the softmax of each tile (averaged over mirrorings),
        weighted by a float32 Gaussian (v2 rounds it to float16, which changes the weights far
        from the tile centres), or plainly when one tile covers the volume."""
        import torch
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

        predictor = self.predictor
        patch = tuple(predictor.configuration_manager.patch_size)
        padded, revert_padding = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        steps = compute_steps_for_sliding_window(padded.shape[1:], patch, self.settings.tile_step_size)
        one_tile = all(len(s) == 1 for s in steps)
        predictor.tiles_last_case = math.prod(len(s) for s in steps)
        weight = torch.ones(patch) if one_tile else compute_gaussian(patch, 1 / 8, 1, torch.float32, torch.device("cpu"))
        total = torch.zeros((len(predictor.label_manager.all_labels), *padded.shape[1:]))
        weights = torch.zeros(padded.shape[1:])
        predictor.network.to(self.device).eval()
        with torch.inference_mode():
            for z in steps[0]:
                for y in steps[1]:
                    for x in steps[2]:
                        tile = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                        probabilities = predictor._internal_maybe_mirror_and_predict(
                            padded[(slice(None), *tile)][None].to(self.device))[0].float().cpu()
                        total[(slice(None), *tile)] += probabilities * weight
                        weights[tile] += weight
        return (total / weights)[(slice(None), *revert_padding[1:])]

def _resampling(configuration, kind: str):
    """preprocessing.resample_to_shape where the plans name nnU-Net's default resampling for
    `kind` (data or probabilities), as plans from nnU-Net's planner, train.py and the v1 import
    do; else the function the plans name."""
    kwargs = dict(configuration.configuration.get(f"resampling_fn_{kind}_kwargs", {}))
    if (configuration.configuration.get(f"resampling_fn_{kind}") == "resample_data_or_seg_to_shape"
            and not kwargs.pop("is_seg", False)):
        return partial(resample_to_shape, **kwargs, workers=usable_cpus())
    return getattr(configuration, f"resampling_fn_{kind}")


def _cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU flags name bfloat16 arithmetic (Linux; elsewhere assume it does)."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return True
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _cpu_network(network, precision: str = "float32"):
    """The network as it runs fastest on the CPU with the same weights (benchmarks/cpu_network.py):
    channels-last 3D tensors, on which oneDNN's convolutions are faster on some CPUs (2x on an
    AVX-512 Xeon, equal on an AVX2 EPYC), and instance normalisation as one var_mean and one
    multiply-add (PyTorch's instance_norm copies channels-last tensors to the default layout and
    back). Logits within 1e-4 of nnU-Net's network (tests/test_model_speed.py); with precision
    bfloat16 the network runs under torch.autocast and returns float32. Returns the network and the
    memory format its input tiles should have."""
    import torch

    class BFloat16(torch.nn.Module):
        def __init__(self, network: torch.nn.Module):
            super().__init__()
            self.network = network

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.network(x).float()

    class InstanceNorm(torch.nn.Module):
        def __init__(self, norm: torch.nn.InstanceNorm3d):
            super().__init__()
            self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias

        def forward(self, x):
            variance, mean = torch.var_mean(x, dim=(2, 3, 4), keepdim=True, correction=0)
            scale = self.weight.view(1, -1, 1, 1, 1) * torch.rsqrt(variance + self.eps)
            return torch.addcmul(self.bias.view(1, -1, 1, 1, 1) - mean * scale, x, scale)

    def replace_norms(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if type(child) is torch.nn.InstanceNorm3d and child.affine and not child.track_running_stats:
                setattr(module, name, InstanceNorm(child))
            else:
                replace_norms(child)

    replace_norms(network)
    network = network.to(memory_format=torch.channels_last_3d)
    return (BFloat16(network) if precision == "bfloat16" else network), torch.channels_last_3d


def _batched_tile_predictor_class():
    """nnUNetPredictor whose sliding window sends several tiles through the network at once; the
    tiles, Gaussian weights, float16 sums and their order are nnU-Net 2.8.1's own."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    class BatchedTilePredictor(nnUNetPredictor):
        def __init__(self, tiles_per_batch: int, **kwargs):
            super().__init__(**kwargs)
            self.tiles_per_batch = tiles_per_batch
            self.tile_memory_format = torch.contiguous_format
            self.tiles_last_case = 0  # tiles of the last sliding window, for the log's GFLOP/s

        @torch.inference_mode()
        def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
            results_device = self.device if do_on_device else torch.device("cpu")
            data = data.to(results_device)
            logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half,
                                 device=results_device)
            weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
            gaussian = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                        value_scaling_factor=10, device=results_device) if self.use_gaussian else 1
            for start in range(0, len(slicers), self.tiles_per_batch):
                batch = slicers[start:start + self.tiles_per_batch]
                tiles = torch.stack([data[tile] for tile in batch]).to(self.device)
                tiles = tiles.contiguous(memory_format=self.tile_memory_format)
                for prediction, tile in zip(self._internal_maybe_mirror_and_predict(tiles).to(results_device), batch):
                    if self.use_gaussian:
                        prediction *= gaussian
                    logits[tile] += prediction
                    weights[tile[1:]] += gaussian
            self.tiles_last_case = len(slicers)
            torch.div(logits, weights, out=logits)
            if torch.any(torch.isinf(logits)):
                raise RuntimeError("infinite logits in the sliding window (float16 overflow)")
            return logits

    return BatchedTilePredictor


def _sigmoid_in_place(values: np.ndarray) -> None:
    """1 / (1 + exp(-x)) without a second volume in memory."""
    np.negative(values, out=values)
    with np.errstate(over="ignore"):  # exp(+inf) = inf → probability 0, as intended
        np.exp(values, out=values)
    values += 1
    np.reciprocal(values, out=values)
