"""benchmarks/averaged_weights.py, the recipe of the shipped three-channel model v3.0.0: the mean of two
networks' weights, shared tensors kept shared, and a refusal for networks that are not one network."""

import sys
from pathlib import Path

import pytest
import torch

from mixmicrobleednet import layout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from averaged_weights import averaged_checkpoint  # noqa: E402


def _checkpoint(folder: Path, value: float, shape=(2, 3)) -> Path:
    encoder = torch.full(shape, value)
    # as nnU-Net's PlainConvUNet: the decoder holds the encoder, one tensor under two keys
    weights = {"encoder.w": encoder, "decoder.encoder.w": encoder, "head.b": torch.full((4,), 2 * value),
               "steps": torch.tensor(7)}
    (folder / layout.CHECKPOINT).parent.mkdir(parents=True)
    torch.save({"network_weights": weights, "init_args": {"configuration": "3d_compact"},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2),
                "current_epoch": 10}, folder / layout.CHECKPOINT)
    return folder


def test_the_mean_of_two_networks_keeps_shared_tensors_shared(tmp_path):
    first, second = _checkpoint(tmp_path / "a", 1.0), _checkpoint(tmp_path / "b", 3.0)
    weights = averaged_checkpoint(first, second, 0.25)["network_weights"]
    assert torch.equal(weights["encoder.w"], torch.full((2, 3), 1.5))
    assert torch.equal(weights["head.b"], torch.full((4,), 3.0))
    assert weights["encoder.w"].data_ptr() == weights["decoder.encoder.w"].data_ptr()
    assert weights["steps"].item() == 7  # integers are not averaged


def test_networks_of_another_shape_are_refused(tmp_path):
    first, second = _checkpoint(tmp_path / "a", 1.0), _checkpoint(tmp_path / "b", 3.0, shape=(2, 4))
    with pytest.raises(SystemExit, match="different networks"):
        averaged_checkpoint(first, second, 0.5)
