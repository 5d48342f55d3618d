"""The network as it runs fastest on the CPU with the same weights (benchmarks/cpu_network.py)."""

from __future__ import annotations

import torch


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


def _replace_norms(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is torch.nn.InstanceNorm3d and child.affine and not child.track_running_stats:
            setattr(module, name, InstanceNorm(child))
        else:
            _replace_norms(child)


def cpu_network(network: torch.nn.Module, precision: str = "float32") -> tuple[torch.nn.Module, torch.memory_format]:
    """`network` (changed in place) with channels-last 3D tensors, on which oneDNN's convolutions are
    faster on some CPUs (2x on an AVX-512 Xeon, equal on an AVX2 EPYC), and InstanceNorm. Logits
    within 1e-4 of nnU-Net's network (tests/test_model_speed.py); with precision bfloat16 it runs
    under torch.autocast and returns float32. Returns the network and the memory format its input
    tiles should have."""
    _replace_norms(network)
    network = network.to(memory_format=torch.channels_last_3d)
    return (BFloat16(network) if precision == "bfloat16" else network), torch.channels_last_3d
