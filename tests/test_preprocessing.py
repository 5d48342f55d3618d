"""Our crop and resampling give nnU-Net's numbers: compared with nnunetv2's own functions."""

import json
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero as nnunet_crop_to_nonzero
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

from mixmicrobleednet.nnunet_glue import resample_to_shape
from mixmicrobleednet.preprocessing import crop_to_nonzero

REPO = Path(__file__).resolve().parents[1]
HIGHRES, THICK, LOWRES, MODEL = (0.8, 0.49, 0.49), (3.5, 0.45, 0.45), (3.0, 1.0, 1.0), (1.2, 0.8, 0.8)


@pytest.mark.parametrize("shape, spacing, new_spacing, order, force_separate_z", [
    ((3, 20, 41, 33), HIGHRES, MODEL, 3, None),     # images: the VALDO voxel sizes to the model's
    ((3, 9, 40, 37), THICK, MODEL, 3, None),         # anisotropic: slice by slice, then z
    ((2, 7, 30, 29), LOWRES, MODEL, 3, None),
    ((1, 13, 26, 21), MODEL, HIGHRES, 1, None),      # probabilities back to the input grids
    ((1, 34, 28, 26), MODEL, THICK, 1, None),
    ((1, 12, 25, 30), MODEL, LOWRES, 1, None),
    ((1, 12, 25, 30), MODEL, (0.9, 1.0, 3.1), 3, None),  # another low-resolution axis
    ((2, 10, 12, 14), MODEL, HIGHRES, 3, True),
    ((2, 10, 12, 14), LOWRES, MODEL, 3, False),
    ((1, 5, 9, 1), (1.0, 1.0, 1.0), (0.5, 0.5, 0.3), 3, None),  # a single voxel along an axis
])
def test_resampling_gives_nnunets_values(shape, spacing, new_spacing, order, force_separate_z):
    rng = np.random.default_rng(sum(shape))
    data = (rng.standard_normal(shape) * 100).astype(np.float32)
    new_shape = [max(1, round(n * s / t)) for n, s, t in zip(shape[1:], spacing, new_spacing)]
    expected = resample_data_or_seg_to_shape(data, new_shape, spacing, new_spacing, is_seg=False, order=order,
                                             order_z=0, force_separate_z=force_separate_z)
    ours = resample_to_shape(data, new_shape, spacing, new_spacing, order, 0, force_separate_z)
    assert ours.shape == expected.shape and ours.dtype == expected.dtype == np.float32
    # the same spline, summed in another order: equal but for the last float32 bit of a few voxels
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-5)
    assert np.mean(ours == expected) > 0.999


def test_unchanged_shape_is_returned_as_is():
    data = np.ones((2, 4, 5, 6), np.float32)
    assert resample_to_shape(data, (4, 5, 6), MODEL, MODEL) is data


def _brain_with_holes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = np.zeros((3, 40, 50, 45), np.float32)
    data[:, 5:30, 8:44, 3:40] = rng.standard_normal((3, 25, 36, 37)) + 5
    data[:, 10:15, 10:20, 10:20] = 0          # enclosed: a hole, filled
    data[:, 5:12, 8:12, 3:9] = 0              # open to the box's faces: outside, not a hole
    data[:, 20:25, 30:44, 30:35] = 0          # reaching the box's side only
    data[1, 20:22, 20:22, 20:22] = 0          # zero in one channel only: still brain
    data *= rng.random(data.shape[1:]) > 0.03  # pinholes everywhere
    return data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_gives_nnunets_box_and_brain_mask(seed):
    data = _brain_with_holes(seed)
    expected_data, expected_seg, expected_box = nnunet_crop_to_nonzero(data.copy())
    ours_data, ours_seg, ours_box = crop_to_nonzero(data.copy())
    assert ours_box == expected_box
    np.testing.assert_array_equal(ours_data, expected_data)
    assert ours_seg.dtype == expected_seg.dtype == np.int8
    np.testing.assert_array_equal(ours_seg, expected_seg)
    assert 0 < np.sum(ours_seg == -1) < ours_seg.size / 2  # the test has both brain and outside


def test_crop_of_an_empty_volume_is_nnunets():
    data = np.zeros((2, 5, 6, 7), np.float32)
    expected = nnunet_crop_to_nonzero(data.copy())
    ours = crop_to_nonzero(data.copy())
    assert ours[2] == expected[2]
    np.testing.assert_array_equal(ours[1], expected[1])


def test_plans_with_other_resampling_use_nnunets_function():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from mixmicrobleednet.nnunet_glue import _resampling

    plans = json.loads((REPO / "models" / "phantom-t1-t2-t2s" / "plans.json").read_text())
    name, configuration = next(iter(plans["configurations"].items()))
    configuration["resampling_fn_probabilities"] = "resample_torch_fornnunet"
    configuration["resampling_fn_probabilities_kwargs"] = {"is_seg": False, "force_separate_z": None}
    manager = PlansManager(plans).get_configuration(name)
    assert _resampling(manager, "data").func is resample_to_shape
    assert _resampling(manager, "probabilities").func.__name__ == "resample_torch_fornnunet"
