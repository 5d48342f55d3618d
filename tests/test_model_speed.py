"""The fast prediction path keeps nnU-Net's masks: several tiles per network call and one resampled
map, against nnU-Net's own predict_single_npy_array with the shipped model on a crop of the test case."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.cases import seed_cases
from mixmicrobleednet.imaging import load_case
from mixmicrobleednet.model import Model, PredictionSettings

pytestmark = pytest.mark.shipped
REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "models" / "phantom-t1-t2-t2s"


def test_batched_tiles_and_single_map_resampling_keep_nnunets_mask(tmp_path):
    # a crop of the shipped test case around three of its microbleeds
    for channel in layout.CHANNELS:
        image = sitk.ReadImage(str(REPO / "test" / "input" / layout.input_name(stem("s5c000"), channel)))
        sitk.WriteImage(image[74:154, 30:110, 10:40], str(tmp_path / layout.input_name(stem("crop"), channel)))
    stack = load_case(seed_cases(tmp_path)[0])

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    reference = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=__import__("torch").device("cpu"),
                                perform_everything_on_device=False, allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(WEIGHTS), use_folds=(layout.FOLD,),
                                                   checkpoint_name=layout.CHECKPOINT_NAME)
    _, nnunet = reference.predict_single_npy_array(stack.array, {"spacing": list(stack.spacing_zyx)}, None, None, True)
    nnunet_mask = nnunet.argmax(0)

    ours = Model(WEIGHTS, "cpu", PredictionSettings(use_mirroring=False, tiles_per_batch=4))
    probability = ours.predict_probabilities(stack.array, stack.spacing_zyx)
    assert 20 < nnunet_mask.sum() < nnunet_mask.size / 10  # microbleeds in the crop, not everywhere
    np.testing.assert_array_equal(probability > 0.5, nnunet_mask.astype(bool))
    assert np.abs(probability - nnunet[1]).max() < 1e-3


def test_the_cpu_network_gives_nnunets_logits():
    """Channels-last weights and tiles, several tiles per call: the network's logits stay within 1e-4
    of nnU-Net's network as nnU-Net runs it (default memory layout, one tile per call)."""
    import torch

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    reference = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(WEIGHTS), use_folds=(layout.FOLD,),
                                                   checkpoint_name=layout.CHECKPOINT_NAME)
    reference.network.load_state_dict(reference.list_of_parameters[0])
    ours = Model(WEIGHTS, "cpu", PredictionSettings(use_mirroring=False))
    assert ours.predictor.tile_memory_format == torch.channels_last_3d
    patch = tuple(ours.predictor.configuration_manager.patch_size)
    tiles = torch.from_numpy(np.random.default_rng(3).standard_normal((4, len(layout.CHANNELS), *patch), np.float32))
    with torch.inference_mode():
        expected = torch.cat([reference.network(tile[None]) for tile in tiles])
        batch = tiles.contiguous(memory_format=ours.predictor.tile_memory_format)
        logits = ours.predictor.network(batch)
    assert np.abs((logits - expected).numpy()).max() < 1e-4


def test_bfloat16_is_asked_for_and_keeps_the_mask_nearly():
    """--precision bfloat16 runs the network under autocast and hands float32 logits on; float32
    stays the default and an unknown precision stops before any case."""
    import torch

    from mixmicrobleednet.modelfolder import ModelError

    patch = (32, 64, 64)
    # one tile: without AMX or AVX-512 BF16 a bfloat16 tile takes about 12 s (AVX2 EPYC)
    tiles = torch.from_numpy(np.random.default_rng(5).standard_normal((1, len(layout.CHANNELS), *patch), np.float32))
    exact = Model(WEIGHTS, "cpu", PredictionSettings(use_mirroring=False))
    reduced = Model(WEIGHTS, "cpu", PredictionSettings(use_mirroring=False, precision="bfloat16"))
    with torch.inference_mode():
        batch = tiles.contiguous(memory_format=torch.channels_last_3d)
        expected, logits = exact.predictor.network(batch), reduced.predictor.network(batch)
    assert logits.dtype == torch.float32 and 0 < np.abs((logits - expected).numpy()).max() < 1.0
    same_class = (logits.argmax(1) == expected.argmax(1)).float().mean().item()
    assert same_class > 0.999
    with pytest.raises(ModelError, match="unknown precision 'float8'"):
        Model(WEIGHTS, "cpu", PredictionSettings(precision="float8"))
