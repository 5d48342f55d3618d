"""The device a model runs on: CUDA or the CPU, the CPUs this process may use (and work spread over
processes), and whether the CPU has bfloat16 arithmetic."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .modelfolder import ModelError

log = logging.getLogger(__name__)


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its affinity (docker run --cpuset-cpus), capped by a cgroup
    v2 CPU quota (docker run --cpus, rounded up)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to read
    return cpus


def in_processes(function: Callable[[Any], Any], items: Sequence, processes: int,
                 initializer: Callable[[], None] | None = None) -> Iterator:
    """function(item) for each of `items`, yielded in order as each is done: in this process, or with
    `processes` > 1 in that many spawned ones, each started by `initializer` (spawned, not forked: a
    fork would copy ITK's and torch's thread pools without their threads); work not yet started is
    cancelled when the caller stops early."""
    if processes <= 1:
        yield from map(function, items)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max(1, min(processes, len(items))), multiprocessing.get_context("spawn"),
                               initializer=initializer)
    try:
        yield from pool.map(function, items)
    finally:
        pool.shutdown(cancel_futures=True)


def resolve_device(requested: str):
    """`auto` → CUDA when present, else CPU; `cuda` without a GPU is an error, not a fallback."""
    import torch

    if requested not in ("auto", "cuda", "cpu"):
        raise ModelError(f"unknown device {requested!r}: use auto, cuda or cpu")
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ModelError("--device cuda was asked for, but PyTorch sees no CUDA GPU "
                         "(CPU build of torch, no driver, or the container was started without --gpus)")
    if requested == "cpu" or not has_cuda:
        reason = "asked for" if requested == "cpu" else "no CUDA GPU visible"
        # PyTorch starts a thread per core of the host; under a CPU quota (docker run --cpus)
        # the surplus threads only wait for each other.
        cpus = usable_cpus()
        if cpus < torch.get_num_threads():
            torch.set_num_threads(cpus)
        log.info("device: cpu (%s; %d torch threads)", reason, torch.get_num_threads())
        return torch.device("cpu")
    log.info("device: cuda (%s, %s)", torch.cuda.get_device_name(0),
             "asked for" if requested == "cuda" else "GPU found")
    return torch.device("cuda")


def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU flags name bfloat16 arithmetic (Linux; elsewhere assume it does)."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return True
    return "amx_bf16" in flags or "avx512_bf16" in flags
