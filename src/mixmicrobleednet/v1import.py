"""Import an nnU-Net v1 3d_fullres model (such as the 2021 MixMicrobleedNet checkpoint) as an
nnU-Net v2 model folder that `predict` and the container load like any other.

- plans.pkl is read with a restricted unpickler (numbers, strings, lists, dicts, numpy arrays:
  nothing that can run code); the checkpoint with torch's `weights_only` loader.
- plans.json gets the v1 3d_fullres stage's spacing, patch size, normalisation and architecture;
  the v1 Generic_UNet weights are mapped onto nnU-Net v2's PlainConvUNet layer by layer (same
  convolutions, norms, transposed convolutions and segmentation heads; v1 has no bias in the last
  two, v2 gets a zero one), and every shape is checked.
- v1 averaged softmax probabilities over sliding-window tiles and mirrorings, and resampled
  probabilities to the input grid, where v2 averages and resamples logits. The plans record this
  (PROBABILITY_AGGREGATION), and `Model` then predicts as v1 did.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np

from . import layout
from .modelfolder import PROBABILITY_AGGREGATION
from .train import dataset_json, write_model_folder

log = logging.getLogger(__name__)

V1_MAX_FEATURES_3D = 320  # Generic_UNet.MAX_NUM_FILTERS_3D
V1_TRAINER_MIRROR_AXES = (0, 1, 2)  # nnUNetTrainerV2's 3D mirroring

# What a v1 plans.pkl is made of; anything else (a class that could run code on load) is refused.
_PLANS_GLOBALS = {
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class V1ImportError(Exception):
    """The v1 plans or checkpoint cannot be imported; the message says which file and why."""


class _PlansUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PLANS_GLOBALS:
            raise V1ImportError(f"refusing to unpickle {module}.{name}: nnU-Net v1 plans hold only numbers, "
                                f"strings, lists, dicts and numpy arrays")
        return super().find_class(module, name)


def read_v1_plans(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            plans = _PlansUnpickler(file).load()
    except V1ImportError as exc:
        raise V1ImportError(f"{path}: {exc}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise V1ImportError(f"{path}: not a readable nnU-Net v1 plans.pkl ({type(exc).__name__}: {exc})") from None
    missing = {"plans_per_stage", "num_modalities", "num_classes", "normalization_schemes", "use_mask_for_norm",
               "base_num_features", "transpose_forward"} - set(plans if isinstance(plans, dict) else ())
    if missing:
        raise V1ImportError(f"{path}: not an nnU-Net v1 plans file (missing {', '.join(sorted(missing))})")
    return plans


def read_v1_weights(path: Path) -> tuple[dict, int]:
    """The network's state_dict and the epoch from a v1 checkpoint (model_final_checkpoint.model)."""
    import torch

    # v1 stored its loss curves as numpy scalars beside the weights: allow exactly those.
    numpy_scalars = [(np._core.multiarray.scalar, name) for name in
                     ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")]
    numpy_dtypes = [np.dtype, *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "bool"))]
    try:
        with torch.serialization.safe_globals([*numpy_scalars, *numpy_dtypes]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise V1ImportError(f"{path}: not a loadable nnU-Net v1 checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise V1ImportError(f"{path}: no 'state_dict' in it: not an nnU-Net v1 checkpoint")
    return checkpoint["state_dict"], int(checkpoint.get("epoch", 0))


def v2_plans_from_v1(v1: dict) -> tuple[dict, dict]:
    """(plans.json, dataset.json) for the v1 3d_fullres stage (the last stage of the plans)."""
    from .train import LABELS, PLANS_NAME, TrainingConfig, make_plans

    if v1["num_modalities"] != len(layout.CHANNELS) or v1["num_classes"] != 1:
        raise V1ImportError(f"the v1 model has {v1['num_modalities']} input channels and {v1['num_classes']} "
                            f"foreground classes; MixMicrobleedNet needs {len(layout.CHANNELS)} ({', '.join(layout.CHANNELS)}) "
                            f"and 1 (microbleed)")
    schemes = {str(v) for v in v1["normalization_schemes"].values()}
    if schemes != {"nonCT"}:
        raise V1ImportError(f"normalisation {sorted(schemes)} is not supported (MRI models use nonCT: z-score)")
    stage = v1["plans_per_stage"][max(v1["plans_per_stage"])]
    strides = [[1, 1, 1], *[[int(k) for k in kernel] for kernel in stage["pool_op_kernel_sizes"]]]
    features = [min(int(v1["base_num_features"]) * 2 ** i, V1_MAX_FEATURES_3D) for i in range(len(strides))]
    config = TrainingConfig(
        name="fullres", spacing=tuple(float(s) for s in stage["current_spacing"]),
        patch_size=tuple(int(p) for p in stage["patch_size"]), features_per_stage=tuple(features),
        strides=tuple(tuple(s) for s in strides), batch_size=int(stage["batch_size"]), epochs=0,
        iterations_per_epoch=0, val_iterations_per_epoch=0, oversample_foreground=0.33,
        kernel_sizes=tuple(tuple(int(k) for k in kernel) for kernel in stage["conv_kernel_sizes"]),
        conv_per_stage=int(v1.get("conv_per_stage", 2)))
    plans = make_plans(config, [float(s) for s in stage["original_spacing"]],
                       [int(s) for s in stage["median_patient_size_in_voxels"]])
    plans["configurations"][config.configuration]["use_mask_for_norm"] = [
        bool(v1["use_mask_for_norm"][i]) for i in range(len(layout.CHANNELS))]
    plans["transpose_forward"] = [int(t) for t in v1["transpose_forward"]]
    plans["transpose_backward"] = [int(t) for t in v1["transpose_backward"]]
    plans["plans_name"] = PLANS_NAME
    plans["experiment_planner_used"] = "mixmicrobleednet import-v1 (nnU-Net v1 plans)"
    plans[PROBABILITY_AGGREGATION] = True
    modalities = {int(k): str(v) for k, v in v1.get("modalities", {}).items()}
    if modalities and [modalities[i] for i in sorted(modalities)] != list(layout.CHANNELS):
        log.warning("v1 modalities %s: assuming they are %s in this order", modalities, ", ".join(layout.CHANNELS))
    dataset = dataset_json(layout.CHANNELS, LABELS, numTraining=0, name="MixMicrobleedNet (imported from nnU-Net v1)")
    return plans, dataset


def _layers(module, kind) -> list:
    return [m for m in module.modules() if type(m) is kind]


def load_v1_weights(v1_state: dict, network) -> None:
    """Copy a v1 Generic_UNet's weights into a v2 PlainConvUNet built from the converted plans,
    layer by layer; every shape is checked and every weight on both sides must be used."""
    import torch
    from torch import nn

    n_stages = len(network.encoder.stages)
    assigned, used = set(), set()

    def copy(v2_module, v1_prefix: str, what: str) -> None:
        for name, parameter in v2_module.named_parameters(recurse=False):
            key = f"{v1_prefix}.{name}"
            if key in v1_state:
                value = v1_state[key]
                used.add(key)
            elif name == "bias":  # v1 had no bias in transposed convolutions and segmentation heads
                value = torch.zeros_like(parameter)
            else:
                raise V1ImportError(f"the v1 checkpoint has no {key} for the {what}")
            if tuple(value.shape) != tuple(parameter.shape):
                raise V1ImportError(f"{key}: shape {tuple(value.shape)} in the checkpoint, {tuple(parameter.shape)} "
                                    f"in the network built from the plans ({what})")
            with torch.no_grad():
                parameter.copy_(value)
            assigned.add(id(parameter))

    def copy_stage(v2_stage, v1_prefix: str, what: str) -> None:
        # v1 StackedConvLayers hold blocks.<j>.conv/.instnorm; the bottleneck and each decoder stage
        # are two of them in a row (n-1 convolutions, then 1), so collect the blocks in order.
        blocks = sorted({k[: -len(".conv.weight")] for k in v1_state
                         if k.startswith(v1_prefix + ".") and k.endswith(".conv.weight")},
                        key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
        convs, norms = _layers(v2_stage, nn.Conv3d), _layers(v2_stage, nn.InstanceNorm3d)
        if len(blocks) != len(convs):
            raise V1ImportError(f"{what}: {len(blocks)} convolutions in the v1 checkpoint ({v1_prefix}), "
                                f"{len(convs)} in the network built from the plans")
        for j, (conv, norm, block) in enumerate(zip(convs, norms, blocks)):
            copy(conv, f"{block}.conv", f"{what} convolution {j}")
            copy(norm, f"{block}.instnorm", f"{what} norm {j}")

    for s in range(n_stages):
        copy_stage(network.encoder.stages[s], f"conv_blocks_context.{s}", f"encoder stage {s}")
    for u in range(n_stages - 1):
        copy_stage(network.decoder.stages[u], f"conv_blocks_localization.{u}", f"decoder stage {u}")
        copy(network.decoder.transpconvs[u], f"tu.{u}", f"decoder upsampling {u}")
        copy(network.decoder.seg_layers[u], f"seg_outputs.{u}", f"segmentation head {u}")
    unset = [name for name, p in network.named_parameters() if id(p) not in assigned]
    unused = sorted(set(v1_state) - used)
    if unset or unused:
        raise V1ImportError(f"the v1 checkpoint does not fit the plans: {len(unused)} of its weights unused "
                            f"({', '.join(unused[:3])}), {len(unset)} network weights unset ({', '.join(unset[:3])})")


def import_v1(plans_path: Path, checkpoint_path: Path, out_dir: Path) -> Path:
    """Write an nnU-Net v2 model folder for a v1 3d_fullres model; returns `out_dir`."""
    from .train import build_network

    plans, dataset = v2_plans_from_v1(read_v1_plans(Path(plans_path)))
    configuration = next(iter(plans["configurations"]))
    v1_state, epoch = read_v1_weights(Path(checkpoint_path))
    network = build_network(plans, configuration)
    load_v1_weights(v1_state, network)
    write_model_folder(Path(out_dir), plans, dataset, {
        "network_weights": network.state_dict(), "init_args": {"configuration": configuration},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": V1_TRAINER_MIRROR_AXES,
        "current_epoch": epoch})
    parameters = sum(p.numel() for p in network.parameters())
    log.info("imported %s (epoch %d, %s parameters) into %s", checkpoint_path, epoch, f"{parameters:,}", out_dir)
    return out_dir
