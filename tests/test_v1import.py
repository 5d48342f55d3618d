"""import-v1 against nnU-Net v1 itself: same network output, same mask as v1's own inference.

nnU-Net v1 runs in its own environment (.venv-nnunetv1, made by scripts/setup-nnunetv1-venv.sh
on first use); tests/nnunetv1/v1_reference.py builds a reduced-width copy of the real 2021 plans
with random weights there and saves it with v1's own trainer (fixtures v1_run and imported_v1 in
conftest.py; the container test runs the imported model too).
"""

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.cli import main
from mixmicrobleednet.train import CONFIGS, build_network, configuration_plans
from mixmicrobleednet.v1import import V1ImportError, read_v1_plans, v2_plans_from_v1

from conftest import REFERENCE_PLANS


def test_imported_network_gives_the_v1_network_output(v1_run, imported_v1):
    plans = json.loads((imported_v1 / "plans.json").read_text())
    network = build_network(plans, "3d_fullres")
    checkpoint = torch.load(imported_v1 / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint["network_weights"])
    network.eval()
    with torch.no_grad():
        output = network(torch.from_numpy(np.load(v1_run / "network_input.npy"))).numpy()
    expected = np.load(v1_run / "network_output.npy")
    assert output.shape == expected.shape == (1, 2, 48, 96, 64)
    assert np.abs(output - expected).max() < 1e-4


@pytest.mark.parametrize("cpu_runtime", ["torch", "openvino-checked", "openvino-accurate", "openvino"])
def test_predict_with_the_imported_model_gives_v1s_mask(v1_run, imported_v1, tmp_path, cpu_runtime):
    out = tmp_path / "out"
    assert main(["predict", "-i", str(v1_run / "seed"), "-o", str(out), "--model", str(imported_v1), "--device", "cpu",
                 "--fast", "--save-probabilities", "--no-qc", "--cpu-runtime", cpu_runtime]) == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(layout.prediction_path(out, stem("v1case")))))
    v1 = sitk.GetArrayFromImage(sitk.ReadImage(str(v1_run / "v1_prediction.nii.gz")))
    assert 0 < v1.sum() < v1.size  # random weights, but a mask with both classes: the comparison means something
    # v1 stores the softmax (float16) inside the brain's bounding box, where it predicted
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(out / layout.seed_output_paths(stem("v1case"))["probability"])))
    inside = np.argwhere(sitk.GetArrayFromImage(sitk.ReadImage(str(v1_run / "seed" / layout.input_name(stem("v1case"), "T1")))))
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(inside.min(0), inside.max(0)))
    v1_softmax = np.load(v1_run / "v1_prediction.npz")["softmax"].astype(np.float32)
    assert v1_softmax.shape[1:] == probability[box].shape
    # openvino's channels-last normalisation sums in one float32 chain per stream: 1.2e-3 measured
    # with one single-threaded stream per core (under 1e-3 with one stream on both cores)
    assert np.abs(probability[box] - v1_softmax[1]).max() < (2e-3 if cpu_runtime == "openvino" else 1e-3)
    if cpu_runtime == "torch":
        np.testing.assert_array_equal(ours, v1)
    else:
        # OpenVINO's kernels round differently: random weights leave many voxels at a tie (v1's
        # float16 softmax reads 0.5), and only those may fall the other way
        disagree = ours != v1
        assert disagree.sum() == disagree[box].sum()  # outside the box both are background
        assert np.abs(v1_softmax[1][disagree[box]] - 0.5).max(initial=0) < 1e-3, disagree.sum()


def test_the_real_2021_plans_convert_to_the_papers_architecture():
    plans, dataset = v2_plans_from_v1(read_v1_plans(REFERENCE_PLANS))
    configuration = plans["configurations"]["3d_fullres"]
    paper = configuration_plans(CONFIGS["mixmicrobleednet-v1"], [1, 1, 1])
    assert configuration["architecture"] == paper["architecture"]
    assert configuration["patch_size"] == [96, 192, 128]
    assert configuration["spacing"] == pytest.approx([0.8, 0.48828101, 0.48828101])
    assert configuration["normalization_schemes"] == ["ZScoreNormalization"] * 3
    assert configuration["use_mask_for_norm"] == [True] * 3
    assert list(dataset["channel_names"].values()) == list(layout.CHANNELS)
    parameters = sum(p.numel() for p in build_network(plans, "3d_fullres").parameters())
    assert 30.5e6 < parameters < 31.1e6


def test_plans_that_would_run_code_are_refused(tmp_path):
    evil = tmp_path / "plans.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "owned").encode() + b"'\ntR.")
    with pytest.raises(V1ImportError, match="refusing to unpickle os.system"):
        read_v1_plans(evil)
    assert not (tmp_path / "owned").exists()


def test_malformed_files_are_clear_errors(v1_run, tmp_path, caplog):
    checkpoint = v1_run / "model" / "all" / "model_final_checkpoint.model"
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x04not a pickle at all")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"something": 1}))
    (tmp_path / "garbage.model").write_bytes(b"PK\x03\x04 truncated")
    cases = [
        (tmp_path / "garbage.pkl", checkpoint, "garbage.pkl: not a readable nnU-Net v1 plans.pkl"),
        (tmp_path / "other.pkl", checkpoint, "other.pkl: not an nnU-Net v1 plans file (missing"),
        (v1_run / "model" / "plans.pkl", tmp_path / "garbage.model", "garbage.model: not a loadable nnU-Net v1 checkpoint"),
        # the full-width 2021 plans with the reduced-width checkpoint: the shapes do not fit
        (REFERENCE_PLANS, checkpoint, "shape (8, 3, 3, 3, 3) in the checkpoint, (32, 3, 3, 3, 3) in the network"),
    ]
    for plans, weights, message in cases:
        caplog.clear()
        assert main(["import-v1", "--plans", str(plans), "--checkpoint", str(weights), "--out", str(tmp_path / "m")]) == 2
        assert message in caplog.text
    assert not (tmp_path / "m").exists()  # nothing written when the import fails
