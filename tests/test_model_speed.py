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
WEIGHTS = REPO / "weights"


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
