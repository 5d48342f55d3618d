"""Everything that mirrors nnU-Net's internals, pinned to nnU-Net 2.8.1: a model folder's plans and
preprocessing, the predictor with its batched sliding window (and nnU-Net v1's, for imported models),
and the way back to the input grid. Each function names the upstream function it mirrors; the
package's other inference modules never import nnunetv2 (tests/test_architecture.py)."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import logging
import math
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from acvl_utils.cropping_and_padding.padding import pad_nd_image

from . import layout
from .device import usable_cpus
from .preprocessing import crop_to_nonzero, resample_separable

#: The nnU-Net release whose internals this module mirrors (requirements.txt and pyproject.toml pin it).
NNUNET_VERSION = "2.8.1"

# An error, not a warning: with another release the code below may still run and give other
# probabilities without a sign (float16 sums, Gaussian, resampling rule). Checked before importing
# nnunetv2, whose modules another release may have moved.
if importlib.metadata.version("nnunetv2") != NNUNET_VERSION:
    raise ImportError(f"nnU-Net {importlib.metadata.version('nnunetv2')} is installed, but MixMicrobleedNet mirrors "
                      f"the internals of nnU-Net {NNUNET_VERSION}: pip install nnunetv2=={NNUNET_VERSION}")

from nnunetv2.configuration import ANISO_THRESHOLD  # noqa: E402
from nnunetv2.inference.sliding_window_prediction import (  # noqa: E402
    compute_gaussian, compute_steps_for_sliding_window)
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor  # noqa: E402
from nnunetv2.preprocessing.resampling.default_resampling import (  # noqa: E402
    compute_new_shape, determine_do_sep_z_and_axis)
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402
from nnunetv2.utilities.helpers import empty_cache  # noqa: E402
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

log = logging.getLogger(__name__)

#: The trainer whose network open_predictor builds itself (nnUNetTrainer.build_network_architecture);
#: a checkpoint of another trainer is opened by nnU-Net's own search for its class.
DEFAULT_TRAINER = "nnUNetTrainer"


class PlansPreprocessing:
    """A model folder's preprocessing without the network: the plans, dataset.json and the
    configuration its checkpoint names, as nnU-Net's predictor reads them."""

    def __init__(self, folder: Path):
        # mirrors nnunetv2.inference.predict_from_raw_data.nnUNetPredictor.initialize_from_trained_model_folder
        # (the plans and the checkpoint's configuration; the weights are the predictor's)
        checkpoint = torch.load(folder / layout.CHECKPOINT, map_location="cpu", weights_only=False)
        self.plans = PlansManager(json.loads((folder / layout.PLANS_JSON).read_text()))
        self.configuration = self.plans.get_configuration(checkpoint["init_args"]["configuration"])
        self.dataset_json = json.loads((folder / layout.DATASET_JSON).read_text())
        self.preprocessor = self.configuration.preprocessor_class(verbose=False)
        # _default_preprocess takes DefaultPreprocessor's steps (3D); a model with another preprocessor runs its own.
        self.default = type(self.preprocessor) is DefaultPreprocessor and len(self.configuration.spacing) == 3
        self.resample_data, self.resample_probabilities = (_resampling(self.configuration, k)
                                                           for k in ("data", "probabilities"))

    def preprocess(self, channels: np.ndarray, spacing_zyx: tuple[float, float, float]) -> tuple[np.ndarray, dict]:
        """A (channel, z, y, x) array on the input grid, preprocessed as nnU-Net's run_case_npy:
        the network's input and the properties that to_input_grid reads."""
        if self.default:
            return self._default_preprocess(channels, spacing_zyx)
        data, _, properties = self.preprocessor.run_case_npy(
            channels, None, {"spacing": list(spacing_zyx)}, self.plans, self.configuration, self.dataset_json)
        return data, properties

    def _default_preprocess(self, channels: np.ndarray, spacing_zyx) -> tuple[np.ndarray, dict]:
        """DefaultPreprocessor.run_case_npy without a segmentation: transpose, crop to the nonzero
        box, z-score inside the brain, resample to the model's spacing; the crop and the resampling
        from .preprocessing (same values, less work; channels resampled in parallel)."""
        # mirrors nnunetv2.preprocessing.preprocessors.default_preprocessor.DefaultPreprocessor.run_case_npy
        plans, configuration = self.plans, self.configuration
        data = channels.astype(np.float32, copy=False).transpose([0, *[axis + 1 for axis in plans.transpose_forward]])
        spacing = [spacing_zyx[axis] for axis in plans.transpose_forward]
        properties = {"spacing": list(spacing_zyx), "shape_before_cropping": data.shape[1:]}
        data, seg, properties["bbox_used_for_cropping"] = crop_to_nonzero(data)
        # nnU-Net copies the whole volume to float32; a copy of the brain's box is enough (the same
        # values), and the caller's array, which the regions and QC read later, stays as it was
        data = data.copy() if np.may_share_memory(data, channels) else data
        properties["shape_after_cropping_and_before_resampling"] = data.shape[1:]
        target_spacing = configuration.spacing
        new_shape = compute_new_shape(data.shape[1:], spacing, target_spacing)
        data = self.preprocessor._normalize(data, seg, configuration, plans.foreground_intensity_properties_per_channel)
        return self.resample_data(data, new_shape, spacing, target_spacing), properties

    def to_input_grid(self, values: np.ndarray, properties: dict, outside: float) -> np.ndarray:
        """Resample one (1, z, y, x) map to the cropped input shape, put it into the uncropped volume
        (`outside` the brain box: background), undo the transpose."""
        # mirrors nnunetv2.inference.export_prediction.convert_predicted_logits_to_segmentation_with_correct_shape
        input_spacing = [properties["spacing"][i] for i in self.plans.transpose_forward]
        resampled = self.resample_probabilities(
            values, properties["shape_after_cropping_and_before_resampling"], self.configuration.spacing, input_spacing)
        full = np.full(properties["shape_before_cropping"], outside, np.float32)
        full = insert_crop_into_image(full, np.asarray(resampled[0], np.float32), properties["bbox_used_for_cropping"])
        return np.ascontiguousarray(full.transpose(self.plans.transpose_backward))


def _resampling(configuration, kind: str):
    """resample_to_shape where the plans name nnU-Net's default resampling for `kind` (data or
    probabilities), as plans from nnU-Net's planner, train.py and the v1 import do; else the
    function the plans name."""
    # mirrors nnunetv2.utilities.plans_handling.plans_handler.ConfigurationManager.resampling_fn_data
    # and .resampling_fn_probabilities
    kwargs = dict(configuration.configuration.get(f"resampling_fn_{kind}_kwargs", {}))
    if (configuration.configuration.get(f"resampling_fn_{kind}") == "resample_data_or_seg_to_shape"
            and not kwargs.pop("is_seg", False)):
        return partial(resample_to_shape, **kwargs, workers=usable_cpus())
    return getattr(configuration, f"resampling_fn_{kind}")


def resample_to_shape(data: np.ndarray, new_shape, current_spacing, new_spacing, order: int = 3,
                      order_z: int = 0, force_separate_z: bool | None = False,
                      separate_z_anisotropy_threshold: float | None = None, workers: int | None = None) -> np.ndarray:
    """nnU-Net's resampling of data (not a segmentation), float32 out: its rule picks the axis
    resampled on its own, preprocessing.resample_separable computes the values."""
    # mirrors nnunetv2.preprocessing.resampling.default_resampling.resample_data_or_seg_to_shape (is_seg=False)
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    separate_z, lowres_axis = determine_do_sep_z_and_axis(
        force_separate_z, current_spacing, new_spacing, separate_z_anisotropy_threshold or ANISO_THRESHOLD)
    return resample_separable(data, new_shape, lowres_axis if separate_z else None, order, order_z, workers)


class BatchedTiles:
    """What BatchedTilePredictor adds to nnUNetPredictor: its sliding window sends several tiles through
    the network at once and (mirror_in_batch) a tile's mirrored passes too; the tiles, Gaussian
    weights, float16 sums and their order are nnU-Net 2.8.1's own. A GPU that runs out of memory for
    a call gets smaller calls from then on (fewer tiles, then the mirrored passes one by one)."""

    def __init__(self, tiles_per_batch: int, mirror_in_batch: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.tiles_per_batch = tiles_per_batch
        self.mirror_in_batch = mirror_in_batch
        self.tile_memory_format = torch.contiguous_format
        self.tiles_last_case = 0  # tiles of the last sliding window, for the log's GFLOP/s
        #: A second, exact network for the tiles near microbleeds where `network` is fast and less exact
        #: (bfloat16): every tile that touches a voxel whose microbleed log-odds came out above
        #: `recheck_above`, or a neighbour of one, runs again through it (_recheck_where_uncertain).
        self.recheck_network: torch.nn.Module | None = None
        self.recheck_above = -math.inf
        self.tiles_rechecked_last_case = 0

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.mirror_in_batch and self.use_mirroring and self.allowed_mirroring_axes):
            return super()._internal_maybe_mirror_and_predict(x)
        # mirrors nnunetv2.inference.predict_from_raw_data.nnUNetPredictor._internal_maybe_mirror_and_predict:
        # the same passes, summed in the same order, sent through the network as one batch
        axes = [axis + 2 for axis in self.allowed_mirroring_axes]
        combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        passes = self.network(torch.cat([x, *(torch.flip(x, c) for c in combinations)])).split(len(x))
        prediction = passes[0]
        for flipped, mirrored in zip(combinations, passes[1:]):
            prediction += torch.flip(mirrored, flipped)
        prediction /= len(combinations) + 1
        return prediction

    def _smaller_calls(self, error: torch.OutOfMemoryError) -> None:
        """Fewer tiles per call, else the mirrored passes one by one; the error again when a call is one pass."""
        if self.tiles_per_batch > 1:
            self.tiles_per_batch //= 2
        elif self.mirror_in_batch and self.use_mirroring:
            self.mirror_in_batch = False
        else:
            raise error
        log.warning("the GPU ran out of memory for a network call: %d tile(s) per call from now on, mirrored passes %s",
                    self.tiles_per_batch, "in the same call" if self.mirror_in_batch else "one by one")
        empty_cache(self.device)

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        # mirrors nnunetv2.inference.predict_from_raw_data.nnUNetPredictor._internal_predict_sliding_window_return_logits
        results_device = self.device if do_on_device else torch.device("cpu")
        data = data.to(results_device)
        logits = self._weighted_sums(data, slicers, results_device)
        self.tiles_last_case = len(slicers)
        self.tiles_rechecked_last_case = 0
        if self.recheck_network is not None:
            self._recheck_where_uncertain(data, slicers, logits, results_device)
        if torch.any(torch.isinf(logits)):
            raise RuntimeError("infinite logits in the sliding window (float16 overflow)")
        return logits

    def _weighted_sums(self, data: torch.Tensor, slicers: list, results_device: torch.device) -> torch.Tensor:
        """The tiles' Gaussian-weighted logits summed in float16 in the tiles' order, divided by the
        summed weights: nnU-Net's numbers, several tiles per network call."""
        logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half,
                             device=results_device)
        weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
        gaussian = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                    value_scaling_factor=10, device=results_device) if self.use_gaussian else 1
        start = 0
        while start < len(slicers):
            batch = slicers[start:start + self.tiles_per_batch]
            tiles = torch.stack([data[tile] for tile in batch]).to(self.device)
            tiles = tiles.contiguous(memory_format=self.tile_memory_format)
            try:
                predictions = self._internal_maybe_mirror_and_predict(tiles)
            except torch.OutOfMemoryError as error:
                del tiles
                self._smaller_calls(error)
                continue
            for prediction, tile in zip(predictions.to(results_device), batch):
                if self.use_gaussian:
                    prediction *= gaussian
                logits[tile] += prediction
                weights[tile[1:]] += gaussian
            start += len(batch)
        torch.div(logits, weights, out=logits)
        return logits

    def _recheck_where_uncertain(self, data: torch.Tensor, slicers: list, logits: torch.Tensor,
                                 results_device: torch.device) -> None:
        """Replace, in `logits`, each voxel whose microbleed log-odds (label 1 against 0) exceed
        recheck_above, and its 26 neighbours, by recheck_network's sums. Every tile that covers such
        a voxel runs again, in the same order, so those voxels get the sums an exact pass alone would
        give; the neighbours make the linear resampling to the input grid exact wherever a voxel
        there could lie near the threshold."""
        above = torch.nonzero(logits[1].float() - logits[0].float() > self.recheck_above).cpu()
        if not len(above):
            return
        chosen = [tile for tile, rechecked in zip(slicers, tiles_near(above, slicers).tolist()) if rechecked]
        self.tiles_rechecked_last_case = len(chosen)
        fast, self.network = self.network, self.recheck_network
        try:
            exact = self._weighted_sums(data, chosen, results_device)
        finally:
            self.network = fast
        offsets, shape = torch.cartesian_prod(*[torch.arange(-1, 2)] * 3), torch.tensor(logits.shape[1:])
        for part in above.split(65536):  # 27 neighbours each: bounded memory where many voxels are above
            near = (part[:, None] + offsets).reshape(-1, 3)
            near = (slice(None), *near[((near >= 0) & (near < shape)).all(1)].T.to(logits.device))
            logits[near] = exact[near]

    def passes_per_tile(self) -> int:
        """Network passes per tile: one per mirroring."""
        # mirrors nnunetv2.inference.predict_from_raw_data.nnUNetPredictor._internal_maybe_mirror_and_predict
        return 2 ** len(self.allowed_mirroring_axes or ()) if self.use_mirroring else 1

    def v1_sliding_window(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net v1's tiled prediction: the softmax of each tile (averaged over mirrorings; the
        network ends in a softmax), weighted by a float32 Gaussian (v2 rounds it to float16, which
        changes the weights far from the tile centres), or plainly when one tile covers the volume."""
        # mirrors nnunet.network_architecture.neural_network.SegmentationNetwork._internal_predict_3D_3Dconv_tiled
        # (nnU-Net v1), from v2's padding, steps and Gaussian
        patch = tuple(self.configuration_manager.patch_size)
        padded, revert_padding = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        steps = compute_steps_for_sliding_window(padded.shape[1:], patch, self.tile_step_size)
        one_tile = all(len(s) == 1 for s in steps)
        self.tiles_last_case = math.prod(len(s) for s in steps)
        weight = torch.ones(patch) if one_tile else compute_gaussian(patch, 1 / 8, 1, torch.float32, torch.device("cpu"))
        total = torch.zeros((len(self.label_manager.all_labels), *padded.shape[1:]))
        weights = torch.zeros(padded.shape[1:])
        self.network.to(self.device).eval()
        with torch.inference_mode():
            for z in steps[0]:
                for y in steps[1]:
                    for x in steps[2]:
                        tile = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                        probabilities = self._internal_maybe_mirror_and_predict(
                            padded[(slice(None), *tile)][None].to(self.device))[0].float().cpu()
                        total[(slice(None), *tile)] += probabilities * weight
                        weights[tile] += weight
        return (total / weights)[(slice(None), *revert_padding[1:])]


def tiles_near(voxels: torch.Tensor, slicers: list) -> torch.Tensor:
    """Which tiles (bool, one per slicer) cover one of `voxels` ((n, 3) indices) or a neighbour of
    one: those the recheck runs again."""
    # Few voxels (microbleeds and mimics): handled as indices, not as volumes. A tile reaches a
    # voxel's neighbours when the tile grown by one voxel holds the voxel.
    corners = torch.tensor([[(axis.start, axis.stop) for axis in tile[1:]] for tile in slicers])
    reached = torch.zeros(len(slicers), dtype=torch.bool)
    for part in voxels.split(4096):
        inside = (part >= corners[:, None, :, 0] - 1) & (part < corners[:, None, :, 1] + 1)
        reached |= inside.all(2).any(1)
    return reached


@cache
def batched_tile_predictor() -> type:
    """BatchedTiles on nnUNetPredictor. nnU-Net's predictor module imports torch._dynamo (about 1.2 s
    of a process's start): imported here, when the model loads, and not with the preprocessing, so
    that the first case is preprocessed meanwhile."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    return type("BatchedTilePredictor", (BatchedTiles, nnUNetPredictor), {})


def open_predictor(folder: Path, plans: PlansPreprocessing, device: torch.device, tiles_per_batch: int,
                   tile_step_size: float, use_mirroring: bool, mirror_in_batch: bool = False) -> BatchedTiles:
    """The predictor with fold `all`'s weights in its network, on `device`; `plans`: the folder's, as read
    for its preprocessing."""
    # mirrors nnunetv2.inference.predict_from_raw_data.predict_entry_point_modelfolder (predictor made,
    # then initialize_from_trained_model_folder). That puts the one fold's weights into the network,
    # and the sliding window is called directly, so they are not loaded again for every case as in
    # nnUNetPredictor.predict_logits_from_preprocessed_data.
    predictor = batched_tile_predictor()(
        tiles_per_batch, mirror_in_batch, tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
        perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
        verbose_preprocessing=False, allow_tqdm=False)
    checkpoint = torch.load(folder / layout.CHECKPOINT, map_location="cpu", weights_only=False)
    if checkpoint["trainer_name"] != DEFAULT_TRAINER:
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=(layout.FOLD,),
                                                       checkpoint_name=layout.CHECKPOINT_NAME)
        return predictor
    # The default trainer's network without nnU-Net's search for the trainer class by name, which imports
    # every trainer module (matplotlib and seaborn among them: seconds of every run's start-up).
    # Mirrors initialize_from_trained_model_folder with nnUNetTrainer.build_network_architecture.
    configuration, dataset_json = plans.configuration, plans.dataset_json
    network = get_network_from_plans(
        configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
        configuration.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans.plans, configuration, dataset_json),
        plans.plans.get_label_manager(dataset_json).num_segmentation_heads, allow_init=True, deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    predictor.manual_initialization(network, plans.plans, configuration, [checkpoint["network_weights"]],
                                    dataset_json, DEFAULT_TRAINER, checkpoint.get("inference_allowed_mirroring_axes"))
    return predictor
