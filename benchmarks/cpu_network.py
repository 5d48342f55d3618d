"""How fast the model's network runs on this CPU, per way of running it, against the CPU's fp32 peak.

    .venv/bin/python benchmarks/cpu_network.py [--model models/phantom-t1-t2-t2s] [--repeats 5]

Counts the network's FLOP per tile from its convolutions, measures the machine's fp32 peak with a
plain matrix multiply (torch, all threads), then times one network call per setting on random
tiles of the model's patch size, 1/2/4/8 tiles per call: nnU-Net's network as nnU-Net runs it
(default memory layout), the same in channels-last 3D layout, ours on PyTorch (cpu_network.py's
cpu_network: channels-last and a leaner instance normalisation), ours on OpenVINO (cpu_network.py's
openvino_network: --cpu-runtime openvino, openvino-accurate, the default, and openvino-checked's bfloat16
pass where the CPU has bfloat16 instructions) and, when installed (with onnx),
ONNX Runtime on the same weights (exported to a temporary folder, never shipped). Prints ms per
tile, GFLOP/s, the share of the peak and the largest logit difference from nnU-Net's network on one
tile. Model.predict_probabilities runs ours with PredictionSettings.tiles_per_batch tiles per call.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def gflop_per_tile(network: torch.nn.Module, patch: tuple[int, ...], channels: int) -> float:
    """Multiply-adds of every (transposed) convolution, as 2 FLOP each, for one tile."""
    total = [0]

    def count(module, inputs, output):
        kernel = int(np.prod(module.kernel_size)) * module.in_channels // module.groups
        if isinstance(module, torch.nn.ConvTranspose3d):  # each input voxel spreads to a kernel
            kernel = int(np.prod(module.kernel_size)) * module.out_channels // module.groups
            total[0] += 2 * inputs[0].numel() * kernel
        else:
            total[0] += 2 * output.numel() * kernel

    hooks = [m.register_forward_hook(count) for m in network.modules()
             if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.inference_mode():
        network(torch.zeros(1, channels, *patch))
    for hook in hooks:
        hook.remove()
    return total[0] / 1e9


def fp32_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The best of `repeats` single-precision matrix multiplies, in GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def best_seconds(call, repeats: int) -> float:
    call()  # oneDNN builds its kernels for a new shape on the first call
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "phantom-t1-t2-t2s")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from mixmicrobleednet import layout
    from mixmicrobleednet.model import Model, PredictionSettings

    ours = Model(args.model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="torch"))
    nnunet = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    nnunet.initialize_from_trained_model_folder(str(args.model), use_folds=(layout.FOLD,),
                                                checkpoint_name=layout.CHECKPOINT_NAME)
    network = nnunet.network.eval()
    network.load_state_dict(nnunet.list_of_parameters[0])
    patch = tuple(ours.predictor.configuration_manager.patch_size)
    channels = len(ours.folder.channels)
    per_tile = gflop_per_tile(network, patch, channels)
    peak = fp32_peak_gflops()
    print(f"model {args.model}: patch {patch}, {channels} channels, {per_tile:.2f} GFLOP per tile; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 peak (matmul) {peak:.0f} GFLOP/s")
    tiles = torch.from_numpy(np.random.default_rng(0).standard_normal((8, channels, *patch), np.float32))
    with torch.inference_mode():
        reference = network(tiles[:1])[0]

    rows = []

    def row(name, count, seconds, first_logits):
        difference = float(np.abs(np.asarray(first_logits, np.float32) - reference.numpy()).max())
        rows.append((name, count, seconds))
        print(f"{name:34} {count} tiles/call {seconds / count * 1000:8.1f} ms/tile "
              f"{per_tile * count / seconds:7.1f} GFLOP/s {per_tile * count / seconds / peak:6.0%} of peak  "
              f"max |logit diff| {difference:.1e}", flush=True)

    def time_torch(name, net, memory_format):
        for count in (1, 2, 4, 8):
            batch = tiles[:count].contiguous(memory_format=memory_format)
            with torch.inference_mode():
                row(name, count, best_seconds(lambda: net(batch), args.repeats), net(batch)[0])

    time_torch("nnU-Net's network", network, torch.contiguous_format)
    time_torch("nnU-Net's, channels-last", network.to(memory_format=torch.channels_last_3d), torch.channels_last_3d)
    time_torch("ours, PyTorch (cpu_network)", ours.predictor.network, ours.predictor.tile_memory_format)
    network.to(memory_format=torch.contiguous_format)
    try:
        import openvino

        for runtime in ("openvino", "openvino-accurate", "openvino-checked"):
            on_openvino = Model(args.model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime=runtime))
            bfloat16 = " bf16 pass" if on_openvino.predictor.recheck_network is not None else ""
            time_torch(f"ours, {on_openvino.cpu_runtime}{bfloat16} {openvino.__version__.split('-')[0]}",
                       on_openvino.predictor.network, on_openvino.predictor.tile_memory_format)
    except ImportError:
        print("openvino not installed: skipped")
    with tempfile.TemporaryDirectory() as folder:
        onnx_file = Path(folder) / "network.onnx"
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime
        except ImportError:
            onnxruntime = None
            print("onnxruntime or onnx not installed: skipped")
        if onnxruntime:
            torch.onnx.export(network, (tiles[:1],), str(onnx_file), dynamo=False, input_names=["tiles"],
                              output_names=["logits"], dynamic_axes={"tiles": {0: "n"}, "logits": {0: "n"}})
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
            for count in (1, 4):
                batch = tiles[:count].numpy()
                seconds = best_seconds(lambda: session.run(None, {"tiles": batch}), args.repeats)
                row(f"onnxruntime {onnxruntime.__version__}", count, seconds, session.run(None, {"tiles": batch})[0][0])
    fastest = min(rows, key=lambda r: r[2] / r[1])
    print(f"fastest: {fastest[0]}, {fastest[1]} tiles/call, {per_tile * fastest[1] / fastest[2]:.1f} GFLOP/s "
          f"({per_tile * fastest[1] / fastest[2] / peak:.0%} of the fp32 peak)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
