"""The network on the CPU with the same weights: on PyTorch (cpu_network) or on OpenVINO
(openvino_network); benchmarks/cpu_network.py times each way."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch

from .modelfolder import ModelError


class InstanceNorm(torch.nn.Module):
    """torch.nn.InstanceNorm3d (affine, no running statistics) as one var_mean and one multiply-add:
    PyTorch's instance_norm copies channels-last tensors to the default layout and back."""

    def __init__(self, norm: torch.nn.InstanceNorm3d):
        super().__init__()
        self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias

    def forward(self, x):
        variance, mean = torch.var_mean(x, dim=(2, 3, 4), keepdim=True, correction=0)
        scale = self.weight.view(1, -1, 1, 1, 1) * torch.rsqrt(variance + self.eps)
        return torch.addcmul(self.bias.view(1, -1, 1, 1, 1) - mean * scale, x, scale)


class BFloat16(torch.nn.Module):
    """A network run under the CPU's bfloat16 autocast, returning float32 logits."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.network(x).float()


def _replace_norms(module: torch.nn.Module, replacement: type[torch.nn.Module] = InstanceNorm,
                   replaced: dict[int, torch.nn.Module] | None = None) -> None:
    """Each InstanceNorm3d (affine, no running statistics) of `module` by `replacement`; one for a norm
    that the network holds twice (nnU-Net's decoder holds the encoder)."""
    replaced = {} if replaced is None else replaced
    for name, child in module.named_children():
        if type(child) is torch.nn.InstanceNorm3d and child.affine and not child.track_running_stats:
            if id(child) not in replaced:
                replaced[id(child)] = replacement(child)
            setattr(module, name, replaced[id(child)])
        else:
            _replace_norms(child, replacement, replaced)


def cpu_network(network: torch.nn.Module, precision: str = "float32") -> tuple[torch.nn.Module, torch.memory_format]:
    """`network` (changed in place) with channels-last 3D tensors, on which oneDNN's convolutions are
    faster on some CPUs (2x on an AVX-512 Xeon, equal on an AVX2 EPYC), and InstanceNorm. Logits
    within 1e-4 of nnU-Net's network (tests/test_model_speed.py); with precision bfloat16 it runs
    under torch.autocast and returns float32. Returns the network and the memory format its input
    tiles should have."""
    _replace_norms(network)
    network = network.to(memory_format=torch.channels_last_3d)
    return (BFloat16(network) if precision == "bfloat16" else network), torch.channels_last_3d


class PlainLayoutInstanceNorm(torch.nn.Module):
    """torch.nn.InstanceNorm3d (affine, no running statistics) on the (N, C, voxels) view, for OpenVINO:
    its normalisation of channels-last data (the layout its convolutions leave) sums each channel in
    one float32 chain; on the plain (N, C, voxels) layout it sums in vector lanes, as accurate as
    PyTorch, at the price of two layout changes per normalisation."""

    def __init__(self, norm: torch.nn.InstanceNorm3d):
        super().__init__()
        self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias

    def forward(self, x):
        normalised = torch.nn.functional.instance_norm(x.reshape(x.shape[0], x.shape[1], -1), eps=self.eps)
        return torch.addcmul(self.bias.view(1, -1, 1, 1, 1), normalised.reshape(x.shape), self.weight.view(1, -1, 1, 1, 1))


def _with_plain_layout_norms(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of `network` with PlainLayoutInstanceNorm for each InstanceNorm3d."""
    import copy

    network = copy.deepcopy(network)
    _replace_norms(network, PlainLayoutInstanceNorm)
    return network


_TRACING = threading.Lock()

#: openvino-checked: the voxels whose microbleed log-odds from the bfloat16 network exceed this (a
#: probability of 3.4e-4) take float32's sums. A voxel at 0.01 (-4.6) would need bfloat16 to be off
#: by 3.4; the largest errors measured are in docs/benchmarks.md (openvino-checked).
RECHECK_ABOVE_LOGODDS = -8.0


class OpenVINONetwork(torch.nn.Module):
    """The network compiled once by OpenVINO for this CPU: float32 tiles (N, channels, *patch) in,
    float32 logits out as a torch tensor of its own (the predictor adds into it in place), N free.
    A call's tiles are shared among the compiled model's streams, each with its own request, run at
    once."""

    def __init__(self, compiled, tile_shape: tuple[int, ...], streams: int):
        super().__init__()
        self.tile_shape = tile_shape
        # one caller: the predictor's sliding window
        self._requests = [compiled.create_infer_request() for _ in range(streams)]

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        if tuple(tiles.shape[1:]) != self.tile_shape:
            raise ValueError(f"OpenVINO's network was compiled for tiles of {self.tile_shape}, "
                             f"not {tuple(tiles.shape[1:])}")
        tiles = tiles.detach().to(torch.float32).contiguous().numpy()
        parts = np.array_split(tiles, min(len(tiles), len(self._requests)))
        running = self._requests[:len(parts)]
        for request, part in zip(running, parts):
            request.start_async([part], share_inputs=True)
        for request in running:
            request.wait()
        return torch.from_numpy(np.concatenate([request.get_output_tensor(0).data for request in running]))


def openvino_network(network: torch.nn.Module, tile_shape: tuple[int, ...], threads: int,
                     accurate: bool = False, streams: int = 1) -> OpenVINONetwork:
    """nnU-Net's network (its own modules, not cpu_network's) converted by OpenVINO's PyTorch frontend
    from one trace on zero tiles of `tile_shape` (channels, *patch), for any number of tiles per call,
    and compiled once for the CPU in float32 on `threads` threads (the precision hint matters: on CPUs
    with AVX-512 BF16 or AMX OpenVINO would otherwise pick bfloat16), in `streams` streams that share
    the threads and each take a part of a call's tiles (small 3D convolutions use a core better
    alone). Its instance normalisation (one
    fused MVN on channels-last data) sums each channel's voxels in one float32 chain, so the logits
    differ from PyTorch's by up to about 1e-3 (tests/test_model_speed.py), and by as much between a
    tile sent alone and in a batch; benchmarks/predict_speed.py --compare-runtimes measures what that
    does to masks. `accurate`: the normalisations on the plain layout (PlainLayoutInstanceNorm):
    logits within 1e-4 of nnU-Net's as PyTorch's, the same for a tile alone or in a batch, somewhat
    slower. Speed of each: docs/benchmarks.md (The network on the CPU). The frontend is called
    directly rather than through openvino.convert_model, which sends usage statistics
    (openvino-telemetry) unless a user opted out."""
    return openvino_networks(network, tile_shape, threads, accurate, streams, ("f32",))[0]


def openvino_networks(network: torch.nn.Module, tile_shape: tuple[int, ...], threads: int, accurate: bool,
                      streams: int, precisions: tuple[str, ...]) -> tuple[OpenVINONetwork, ...]:
    """openvino_network compiled from one conversion once per OpenVINO inference precision (f32, bf16)."""
    try:
        import openvino
        from openvino.frontend import FrontEndManager
        from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
    except ImportError as exc:
        raise ModelError(f"the CPU runtime openvino needs OpenVINO, which cannot be imported here ({exc}): "
                         "pip install openvino==2026.4.1, or run with --cpu-runtime torch") from exc

    network = (_with_plain_layout_norms(network) if accurate else network).eval()
    # One trace at a time: warnings.catch_warnings sets the process's filters, and models of a mixed
    # cohort load in threads of their own.
    with _TRACING, warnings.catch_warnings(), torch.no_grad():
        # torch.jit.trace's deprecation, and instance norm's checks of sizes that a trace takes as
        # constants: nnU-Net's U-Nets have no data-dependent control flow
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace\S*` is deprecated", category=DeprecationWarning)
        decoder = TorchScriptPythonDecoder(network, example_input=(torch.zeros(2, *tile_shape),), shared_memory=False,
                                           trace_kwargs={"check_trace": False})  # no second and third pass
    frontend = FrontEndManager().load_by_framework("pytorch")
    graph = frontend.load(decoder)
    graph.set_partial_shape(graph.get_inputs()[0], openvino.PartialShape([-1, *tile_shape]))
    streams = max(1, min(streams, threads))  # one per core at most, up to one per tile of a call
    converted, core = frontend.convert(graph), openvino.Core()
    return tuple(OpenVINONetwork(core.compile_model(converted, "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams,
        "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY"}), tuple(tile_shape), streams)
        for precision in precisions)
