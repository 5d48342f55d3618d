"""The fast prediction path keeps nnU-Net's masks: several tiles per network call and one resampled
map, against nnU-Net's own predict_single_npy_array with the shipped model on a crop of the test case;
the CPU runtimes (OpenVINO, PyTorch) give the same logits to a measured bound and the same masks."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.cases import seed_cases
from mixmicrobleednet.imaging import load_case
from mixmicrobleednet.model import Model, PredictionSettings
from mixmicrobleednet.options import CPU_RUNTIMES

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "models" / "phantom-t1-t2-t2s"


def _crop_of_the_test_case(folder: Path):
    """A crop of the shipped test case around three of its microbleeds, as the pipeline aligns it."""
    for channel in layout.CHANNELS:
        image = sitk.ReadImage(str(REPO / "test" / "input" / layout.input_name(stem("s5c000"), channel)))
        sitk.WriteImage(image[74:154, 30:110, 10:40], str(folder / layout.input_name(stem("crop"), channel)))
    return load_case(seed_cases(folder)[0])


def test_the_predictor_opens_as_nnunets_without_its_trainer_search(random_model, tmp_path, monkeypatch):
    """open_predictor builds the default trainer's network itself (no import of every trainer module):
    the same network, weights, configuration and mirroring axes as nnU-Net's own
    initialize_from_trained_model_folder; a checkpoint of another trainer goes through nnU-Net's."""
    import shutil

    import torch
    from nnunetv2.inference import predict_from_raw_data
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from mixmicrobleednet.nnunet_glue import DEFAULT_TRAINER, PlansPreprocessing, open_predictor

    def opened(folder):
        ours = open_predictor(folder, PlansPreprocessing(folder), torch.device("cpu"), 4, 0.5, True)
        reference = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
        reference.initialize_from_trained_model_folder(str(folder), use_folds=(layout.FOLD,),
                                                       checkpoint_name=layout.CHECKPOINT_NAME)
        assert type(ours.network) is type(reference.network) and str(ours.network) == str(reference.network)
        for (name, ours_tensor), (_, reference_tensor) in zip(ours.network.state_dict().items(),
                                                              reference.network.state_dict().items(), strict=True):
            assert torch.equal(ours_tensor, reference_tensor), name
        assert ours.configuration_manager.configuration == reference.configuration_manager.configuration
        assert (ours.allowed_mirroring_axes, ours.trainer_name) == (reference.allowed_mirroring_axes,
                                                                    reference.trainer_name)
        return ours

    assert opened(random_model).trainer_name == DEFAULT_TRAINER
    other = tmp_path / "other-trainer"
    shutil.copytree(random_model, other)
    checkpoint = torch.load(other / layout.CHECKPOINT, map_location="cpu", weights_only=False)
    torch.save(checkpoint | {"trainer_name": "nnUNetTrainer_250epochs"}, other / layout.CHECKPOINT)
    searched = []
    # nnU-Net's search imports every trainer module, some of which need torchvision's CUDA build here
    monkeypatch.setattr(predict_from_raw_data, "recursive_find_trainer_class_by_name",
                        lambda name: searched.append(name) or nnUNetTrainer)
    assert opened(other).trainer_name == "nnUNetTrainer_250epochs"
    assert searched == ["nnUNetTrainer_250epochs"] * 2  # ours, then the reference's


@pytest.mark.model
def test_mirrored_passes_in_one_call_give_nnunets_logits_and_a_full_gpu_asks_smaller_calls(random_model):
    """The GPU's sliding window (several tiles and each tile's mirrored passes in one network call),
    run on the CPU: nnU-Net's mirrored passes to float32 rounding, and the sliding window with them
    one pass per call to the rounding of its float16 sums; a call that runs out of memory is made
    again smaller (fewer tiles, then one pass a call) until it fits."""
    import torch

    from mixmicrobleednet.nnunet_glue import PlansPreprocessing, open_predictor

    plans = PlansPreprocessing(random_model)
    ours = open_predictor(random_model, plans, torch.device("cpu"), 2, 0.5, True, mirror_in_batch=True)
    assert ours.passes_per_tile() == 8
    patch = np.array(ours.configuration_manager.patch_size)
    shape = (len(plans.dataset_json["channel_names"]), *(patch * [3, 3, 2] // 2).tolist())  # 2 x 2 x 1 tiles
    data = torch.from_numpy(np.random.default_rng(5).standard_normal(shape, np.float32))

    class Watched(torch.nn.Module):
        """The network, counting the tiles of each call; `room`: a GPU with room for that many a call."""

        def __init__(self, network, room: int | None = None):
            super().__init__()
            self.network, self.room, self.calls = network, room, []

        def forward(self, batch):
            self.calls.append(len(batch))
            if self.room is not None and len(batch) > self.room:
                raise torch.OutOfMemoryError("CUDA out of memory (as a test)")
            return self.network(batch)

    network = ours.network
    tiles = data[None, :, :patch[0], :patch[1], :patch[2]].repeat(2, 1, 1, 1, 1)
    tiles[1] *= 0.5
    with torch.inference_mode():
        in_one_call = ours._internal_maybe_mirror_and_predict(tiles)
        ours.mirror_in_batch = False  # nnU-Net's own: one pass per call
        ours.network = watched = Watched(network)
        np.testing.assert_allclose(in_one_call, ours._internal_maybe_mirror_and_predict(tiles), atol=1e-5)
    assert watched.calls == [2] * 8
    expected = ours.predict_sliding_window_return_logits(data).float()
    assert ours.tiles_last_case == 4

    def same_window(logits):  # float16 sums: a few units in the last place where a float32 term differs
        difference = (logits.float() - expected).abs().numpy()
        assert difference.max() < 2e-2 and (difference < 1e-3).mean() > 0.9999, (difference.max(), difference.mean())

    ours.mirror_in_batch = True
    ours.network = watched = Watched(network)
    same_window(ours.predict_sliding_window_return_logits(data))
    assert watched.calls == [2 * 8] * 2  # 2 tiles x 8 passes a call
    ours.network = watched = Watched(network, room=8)
    same_window(ours.predict_sliding_window_return_logits(data))
    assert (ours.tiles_per_batch, ours.mirror_in_batch) == (1, True) and watched.calls == [16, 8, 8, 8, 8]
    ours.network = Watched(network, room=0)
    with pytest.raises(torch.OutOfMemoryError):
        ours.predict_sliding_window_return_logits(data)
    assert (ours.tiles_per_batch, ours.mirror_in_batch) == (1, False)  # one pass a call did not fit either


def test_a_fast_network_is_rechecked_where_microbleeds_may_be(random_model):
    """openvino-checked's sliding window with stand-in networks: an exact one whose microbleed log-odds
    follow the input voxel by voxel, and a fast one off by up to 0.5 (as bfloat16). Every voxel whose
    log-odds exceed the recheck level, and each neighbour, gets the exact window's float16 sums bit
    for bit; only the tiles near them run again; elsewhere the fast network's numbers stay."""
    import torch

    from mixmicrobleednet.nnunet_glue import PlansPreprocessing, open_predictor

    class Pointwise(torch.nn.Module):
        def __init__(self, error: float):
            super().__init__()
            self.error, self.generator = error, torch.Generator().manual_seed(1)

        def forward(self, tiles):
            microbleed = 40 * tiles[:, :1] - 30  # above -10 where the input exceeds 0.5
            off = self.error * (2 * torch.rand(microbleed.shape, generator=self.generator) - 1)
            return torch.cat([torch.zeros_like(microbleed), microbleed + off], dim=1)

    plans = PlansPreprocessing(random_model)
    predictor = open_predictor(random_model, plans, torch.device("cpu"), 2, 0.5, False)
    patch = np.array(predictor.configuration_manager.patch_size)
    shape = (len(plans.dataset_json["channel_names"]), *(patch * [5, 5, 4] // 2).tolist())  # 4 x 4 x 3 tiles
    data = torch.zeros(shape)
    data[:, 13:16, 3:7, 4:8] = 1.0  # a microbleed in one corner, next to a tile that starts at z 16
    predictor.network = Pointwise(0.0)
    exact = predictor.predict_sliding_window_return_logits(data)
    predictor.network, predictor.recheck_network, predictor.recheck_above = Pointwise(0.5), Pointwise(0.0), -10.0
    checked = predictor.predict_sliding_window_return_logits(data)
    assert 0 < predictor.tiles_rechecked_last_case < predictor.tiles_last_case == 48
    near = torch.zeros(shape[1:], dtype=torch.bool)
    near[12:17, 2:8, 3:9] = True  # the voxels above -10 and their neighbours
    assert torch.equal(checked[:, near], exact[:, near])
    assert not torch.equal(checked[:, ~near], exact[:, ~near])
    assert torch.equal(checked[1] > checked[0], exact[1] > exact[0])


@pytest.mark.shipped
def test_batched_tiles_and_single_map_resampling_keep_nnunets_mask(tmp_path):
    stack = _crop_of_the_test_case(tmp_path)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    reference = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=__import__("torch").device("cpu"),
                                perform_everything_on_device=False, allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(WEIGHTS), use_folds=(layout.FOLD,),
                                                   checkpoint_name=layout.CHECKPOINT_NAME)
    _, nnunet = reference.predict_single_npy_array(stack.array, {"spacing": list(stack.spacing_zyx)}, None, None, True)
    nnunet_mask = nnunet.argmax(0)

    ours = Model(WEIGHTS, "cpu", PredictionSettings(use_mirroring=False, tiles_per_batch=4, cpu_runtime="torch"))
    probability = ours.predict_probabilities(stack.array, stack.spacing_zyx)
    assert 20 < nnunet_mask.sum() < nnunet_mask.size / 10  # microbleeds in the crop, not everywhere
    np.testing.assert_array_equal(probability > 0.5, nnunet_mask.astype(bool))
    assert np.abs(probability - nnunet[1]).max() < 1e-3


@pytest.mark.shipped
def test_the_cpu_network_gives_nnunets_logits():
    """Channels-last weights and tiles, several tiles per call: the network's logits stay within 1e-4
    of nnU-Net's network as nnU-Net runs it (default memory layout, one tile per call)."""
    import torch

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    reference = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(WEIGHTS), use_folds=(layout.FOLD,),
                                                   checkpoint_name=layout.CHECKPOINT_NAME)
    reference.network.load_state_dict(reference.list_of_parameters[0])
    ours = Model(WEIGHTS, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="torch"))
    assert ours.predictor.tile_memory_format == torch.channels_last_3d
    patch = tuple(ours.predictor.configuration_manager.patch_size)
    tiles = torch.from_numpy(np.random.default_rng(3).standard_normal((4, len(layout.CHANNELS), *patch), np.float32))
    with torch.inference_mode():
        expected = torch.cat([reference.network(tile[None]) for tile in tiles])
        batch = tiles.contiguous(memory_format=ours.predictor.tile_memory_format)
        logits = ours.predictor.network(batch)
    assert np.abs((logits - expected).numpy()).max() < 1e-4


@pytest.mark.shipped
def test_bfloat16_is_asked_for_and_keeps_the_mask_nearly():
    """--precision bfloat16 runs the network under autocast and hands float32 logits on; float32
    stays the default and an unknown precision stops before any case."""
    import torch

    from mixmicrobleednet.modelfolder import ModelError

    patch = (32, 64, 64)
    # one tile: without AMX or AVX-512 BF16 a bfloat16 tile takes about 12 s (AVX2 EPYC)
    tiles = torch.from_numpy(np.random.default_rng(5).standard_normal((1, len(layout.CHANNELS), *patch), np.float32))
    exact = Model(WEIGHTS, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="torch"))
    reduced = Model(WEIGHTS, "cpu", PredictionSettings(use_mirroring=False, precision="bfloat16"))
    with torch.inference_mode():
        batch = tiles.contiguous(memory_format=torch.channels_last_3d)
        expected, logits = exact.predictor.network(batch), reduced.predictor.network(batch)
    assert logits.dtype == torch.float32 and 0 < np.abs((logits - expected).numpy()).max() < 1.0
    same_class = (logits.argmax(1) == expected.argmax(1)).float().mean().item()
    assert same_class > 0.999
    with pytest.raises(ModelError, match="unknown precision 'float8'"):
        Model(WEIGHTS, "cpu", PredictionSettings(precision="float8"))


def _tiles(count: int, model: Model, seed: int):
    import torch

    shape = (count, len(model.folder.channels), *model.predictor.configuration_manager.patch_size)
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, np.float32))


def test_openvino_gives_pytorchs_logits(random_model):
    """OpenVINO's compiled network (the CPU default) against PyTorch's on the same tiles: its instance
    normalisation sums each channel in one float32 chain, so the logits move a little (measured
    1.3e-4 to 1.7e-4 on this random model, logits within +-7; 8.4e-4 with the shipped model, logits
    within +-41); openvino-accurate normalises on the plain layout and stays as close as PyTorch's
    own runs (measured 1.9e-5 to 2.2e-5 on this random model; 4.8e-5 from nnU-Net's with the shipped
    model)."""
    import torch

    openvino = Model(random_model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="openvino"))
    accurate = Model(random_model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="openvino-accurate"))
    pytorch = Model(random_model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="torch"))
    assert (openvino.cpu_runtime, accurate.cpu_runtime, pytorch.cpu_runtime) == ("openvino", "openvino-accurate",
                                                                                 "torch")
    assert PredictionSettings().cpu_runtime == "openvino-checked"  # the fastest with torch's masks
    tiles = _tiles(4, pytorch, seed=3)
    with torch.inference_mode():
        expected = pytorch.predictor.network(tiles.contiguous(memory_format=pytorch.predictor.tile_memory_format))
        logits, accurate_logits = (model.predictor.network(tiles.contiguous(
            memory_format=model.predictor.tile_memory_format)) for model in (openvino, accurate))
    assert isinstance(logits, torch.Tensor) and logits.dtype == torch.float32 and logits.shape == expected.shape
    assert 0 < np.abs((logits - expected).numpy()).max() < 1e-3
    assert np.abs((accurate_logits - expected).numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="compiled for tiles of"):
        openvino.predictor.network(tiles[:, :, :16])


@pytest.mark.parametrize("runtime, bound", [("openvino", 1e-3), ("openvino-accurate", 1e-4)])
def test_openvino_batched_tiles_equal_one_tile_per_call(random_model, runtime, bound):
    """Any number of tiles per call (the last call of a sliding window holds the rest) gives each
    tile's logits to the bound against one tile per call (openvino: measured up to 1.6e-4 here, 6.7e-4
    with the shipped model; openvino-accurate: 0, the same logits, here and with the shipped model),
    and the logits are the caller's to add into (the predictor sums in place)."""
    import torch

    model = Model(random_model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime=runtime))
    tiles = _tiles(5, model, seed=4)
    with torch.inference_mode():
        batched = model.predictor.network(tiles)
        one_by_one = torch.cat([model.predictor.network(tile[None]) for tile in tiles])
        again = model.predictor.network(tiles)
        np.testing.assert_array_equal(again.numpy(), batched.numpy())  # the same call, the same logits
        again += 1  # a tensor of its own: the network's next call does not write into it
        np.testing.assert_array_equal(model.predictor.network(tiles).numpy(), batched.numpy())
    assert np.abs((batched - one_by_one).numpy()).max() < bound


def test_cpu_runtime_is_checked_and_openvino_missing_is_a_clear_error(random_model, monkeypatch):
    import sys

    from mixmicrobleednet.modelfolder import ModelError

    with pytest.raises(ModelError, match="unknown CPU runtime 'onnx'"):
        Model(random_model, "cpu", PredictionSettings(cpu_runtime="onnx"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # as where it is not installed
    with pytest.raises(ModelError, match="needs OpenVINO.*--cpu-runtime torch"):
        Model(random_model, "cpu", PredictionSettings(cpu_runtime="openvino"))
    assert Model(random_model, "cpu", PredictionSettings(cpu_runtime="torch")).cpu_runtime == "torch"


@pytest.mark.parametrize("bfloat16", [True, False])
def test_openvino_checked_runs_bfloat16_only_where_the_cpu_has_it(random_model, monkeypatch, bfloat16):
    """Where the CPU lacks bfloat16 instructions, OpenVINO would emulate them, slower than float32:
    openvino-checked is then openvino-accurate alone."""
    from mixmicrobleednet import model as model_module
    from mixmicrobleednet.cpu_network import RECHECK_ABOVE_LOGODDS

    monkeypatch.setattr(model_module, "cpu_has_bfloat16", lambda: bfloat16)
    checked = Model(random_model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="openvino-checked"))
    assert checked.cpu_runtime == ("openvino-checked" if bfloat16 else "openvino-accurate")
    assert (checked.predictor.recheck_network is not None) is bfloat16
    assert checked.predictor.recheck_above == (RECHECK_ABOVE_LOGODDS if bfloat16 else -np.inf)


def test_cpu_runtime_option(monkeypatch):
    import argparse

    from mixmicrobleednet.options import add_options, settings_values
    from mixmicrobleednet.runner import options_from

    def parse(*argv):
        parser = argparse.ArgumentParser()
        add_options(parser, "predict")
        return parser.parse_args(["-i", "in", "-o", "out", *argv])

    assert parse().cpu_runtime == "openvino-checked"
    assert settings_values(parse("--cpu-runtime", "torch"), "predict")["prediction.cpu_runtime"] == "torch"
    monkeypatch.setenv("MIXMICROBLEEDNET_CPU_RUNTIME", "torch")
    assert parse().cpu_runtime == "torch" and parse("--cpu-runtime", "openvino").cpu_runtime == "openvino"
    assert options_from(parse(), "predict").prediction.cpu_runtime == "torch"


@pytest.mark.shipped
def test_both_cpu_runtimes_give_the_same_mask(tmp_path):
    """A crop of the shipped test case, with mirroring (the default: 8 passes per tile, flipped tiles
    through the network), predicted with each CPU runtime: the same mask, probabilities within 1e-3
    of PyTorch's (measured 4.6e-4 for openvino, 4.0e-5 for openvino-accurate; 157 mask voxels);
    openvino-checked gives openvino-accurate's probabilities from 0.01 up."""
    stack = _crop_of_the_test_case(tmp_path)
    probabilities = {runtime: Model(WEIGHTS, "cpu", PredictionSettings(cpu_runtime=runtime)).predict_probabilities(
        stack.array, stack.spacing_zyx) for runtime in CPU_RUNTIMES}
    mask = probabilities["torch"] > 0.5
    assert 20 < mask.sum() < mask.size / 10
    for runtime in ("openvino", "openvino-accurate", "openvino-checked"):
        np.testing.assert_array_equal(probabilities[runtime] > 0.5, mask)
        assert np.abs(probabilities[runtime] - probabilities["torch"]).max() < 1e-3
    possible = probabilities["openvino-accurate"] >= 0.01
    np.testing.assert_array_equal(probabilities["openvino-checked"][possible], probabilities["openvino-accurate"][possible])
