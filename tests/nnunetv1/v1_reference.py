"""Runs in the nnU-Net v1 environment (tests/nnunetv1/requirements.txt), not in ours.

    python v1_reference.py REFERENCE_PLANS WORK_DIR [INPUT_FILE ...]

From the real MixMicrobleedNet v1 plans, makes a reduced copy (8 base features instead of 32, patch
48x96x64 instead of 96x192x128: the same six-stage architecture, small enough for a CPU test),
builds nnU-Net v1's own trainer and network with random weights, and writes with v1's own code:
  WORK_DIR/model/plans.pkl and model/fold_all/model_final_checkpoint.model(.pkl)  - a v1 model folder
  WORK_DIR/network_input.npy, WORK_DIR/network_output.npy  - one patch through the v1 network
  WORK_DIR/v1_prediction.nii.gz (+ .npz softmax)  - v1 inference (predict_cases, no TTA) of the
                                                    input files (channels _0000.._0002), if given
"""

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

BASE_FEATURES = 8
PATCH_SIZE = [48, 96, 64]


def main(reference_plans: Path, work: Path, inputs: list[str]) -> None:
    for variable in ("nnUNet_raw_data_base", "nnUNet_preprocessed", "RESULTS_FOLDER"):
        os.environ.setdefault(variable, str(work / variable))
    from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2

    plans = pickle.loads(reference_plans.read_bytes())
    plans["base_num_features"] = BASE_FEATURES
    for stage in plans["plans_per_stage"].values():
        stage["patch_size"] = np.array(PATCH_SIZE)
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "plans.pkl").write_bytes(pickle.dumps(plans))

    torch.manual_seed(0)
    trainer = nnUNetTrainerV2(str(model_dir / "plans.pkl"), "all", output_folder=str(model_dir),
                              dataset_directory=str(work), batch_dice=False, stage=1, unpack_data=False,
                              deterministic=True, fp16=False)
    trainer.initialize(training=False)
    network = trainer.network
    with torch.no_grad():  # random norm affines too, so that every mapped weight matters
        for module in network.modules():
            if isinstance(module, torch.nn.InstanceNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "model_final_checkpoint.model"))

    network.eval()
    network.do_ds = False
    patch = torch.randn([1, 3, *PATCH_SIZE], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = network(patch)
    np.save(work / "network_input.npy", patch.numpy())
    np.save(work / "network_output.npy", logits.numpy())
    print(f"v1 network: {sum(p.numel() for p in network.parameters()):,} parameters")

    if inputs:
        from nnunet.inference.predict import predict_cases

        predict_cases(str(model_dir), [inputs], [str(work / "v1_prediction.nii.gz")], folds="all", save_npz=True,
                      num_threads_preprocessing=1, num_threads_nifti_save=1, do_tta=False, mixed_precision=False,
                      overwrite_existing=True, all_in_gpu=False, step_size=0.5,
                      checkpoint_name="model_final_checkpoint")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
