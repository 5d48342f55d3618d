"""The prepared GPU check: the package on a GPU with the paper's full-size network and the shipped
model, on the 192x512x512 phantom, with and without test-time mirroring.

    python3 benchmarks/gpu_check.py [--case work/gpu] [--device cuda] [--crop Z Y X]

Writes the 0.8x0.49x0.49 mm phantom of predict_speed.py (seed 7, 192x512x512) to CASE/input once,
then prints, as rows for README's table, per network and mirroring setting: seconds for the first
case (cuDNN's algorithm search and the allocator's warm-up included) and for each further case
with one loaded model, and peak GPU memory (allocated / reserved). The shipped model also runs the
CPU path on the same case in the same process (float32; the GPU runs nnU-Net's float16 autocast):
the rows give the voxels where the two masks differ and both microbleed counts. Last, the whole
`mixmicrobleednet predict --device DEVICE --fast` process on the case, start-up included.

The paper's network is the 2021 plans' 3d_fullres (`mixmicrobleednet-v1`: 30.8 M parameters, patch
96x192x128) with random weights: its cost does not depend on the weights. `--crop Z Y X` cuts the
case to its centre (a quick check of the script on a CPU). scripts/gpu-check.sh runs it on a lent
GPU machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SETTINGS = (("off", False), ("on", True))


def big_phantom(case_dir: Path) -> Path:
    """predict_speed.py's 0.8x0.49x0.49 mm phantom on its 192x512x512 grid, in the seed layout."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from predict_speed import BIG_GRID_XYZ, SEED, _fit_to_grid

    from mixmicrobleednet.phantoms import generate

    input_dir = case_dir / "input"
    if not input_dir.is_dir():
        generate(case_dir / "phantom", 1, SEED, ["highres3d"])
        input_dir.mkdir(parents=True)
        for path in (case_dir / "phantom").glob("*desc-masked*"):
            sitk.WriteImage(_fit_to_grid(sitk.ReadImage(str(path)), BIG_GRID_XYZ), str(input_dir / path.name), True)
    return input_dir


def centre_crop(channels: np.ndarray, size_zyx) -> np.ndarray:
    """A (channel, z, y, x) array cut to `size_zyx` around its centre, contiguous."""
    box = tuple(slice((n - c) // 2, (n - c) // 2 + c) for n, c in zip(channels.shape[1:], size_zyx))
    return np.ascontiguousarray(channels[(slice(None), *box)])


def _mask(probabilities: np.ndarray) -> np.ndarray:
    from mixmicrobleednet.lesions import DEFAULT_THRESHOLD

    return (probabilities > DEFAULT_THRESHOLD).astype(np.uint8)


def _count(mask: np.ndarray) -> int:
    from mixmicrobleednet.lesions import label_microbleeds

    return label_microbleeds(mask)[1]


def _time_model(model, channels, spacing_zyx, cuda: bool, repeats: int = 2) -> tuple[list[float], np.ndarray]:
    """Seconds of each prediction with one loaded model, and the last probabilities."""
    import torch

    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        probabilities = model.predict_probabilities(channels, spacing_zyx)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds, probabilities


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=REPO / "work" / "gpu", help="folder for the phantom and outputs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("Z", "Y", "X"))
    args = parser.parse_args()
    import torch

    from mixmicrobleednet.cases import seed_cases
    from mixmicrobleednet.imaging import load_case
    from mixmicrobleednet.model import Model, PredictionSettings
    from mixmicrobleednet.train import write_random_model

    input_dir = big_phantom(args.case)
    stack = load_case(seed_cases(input_dir)[0])
    channels = stack.array
    if args.crop:
        channels = centre_crop(channels, args.crop)
    cuda = args.device == "cuda"
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; case "
          f"{'x'.join(map(str, channels.shape[1:]))} voxels (z, y, x), spacing "
          f"{tuple(round(s, 3) for s in stack.spacing_zyx)} mm", flush=True)
    paper_dir = args.case / "paper-network"
    if not (paper_dir / "fold_all" / "checkpoint_final.pth").is_file():
        write_random_model(paper_dir, "mixmicrobleednet-v1")
    shipped_dir = REPO / "models" / "phantom-t1-t2-t2s"
    rows = []
    for network, model_dir in (("paper network (30.8 M, random weights)", paper_dir),
                               ("shipped compact model", shipped_dir)):
        for mirroring_name, mirroring in SETTINGS:
            settings = PredictionSettings(use_mirroring=mirroring)
            model = Model(model_dir, args.device, settings)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds, probabilities = _time_model(model, channels, stack.spacing_zyx, cuda)
            memory = (f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} / "
                      f"{torch.cuda.max_memory_reserved() / 2 ** 30:.1f}" if cuda else "-")
            versus_cpu = "-"
            if model_dir == shipped_dir and cuda:
                del model
                cpu_seconds, cpu_probabilities = _time_model(Model(model_dir, "cpu", settings), channels,
                                                             stack.spacing_zyx, False, repeats=1)
                mask, cpu_mask = _mask(probabilities), _mask(cpu_probabilities)
                versus_cpu = (f"{int(np.count_nonzero(mask != cpu_mask))} of {int(cpu_mask.sum())} mask voxels "
                              f"differ, microbleeds {_count(mask)} / {_count(cpu_mask)} (CPU path "
                              f"{cpu_seconds[0]:.1f} s on {torch.get_num_threads()} threads)")
            rows.append(f"| {device} | {network} | {mirroring_name} | {seconds[0]:.1f} | {seconds[1]:.1f} | "
                        f"{memory} | {versus_cpu} |")
            print(rows[-1], flush=True)
            if cuda:
                torch.cuda.empty_cache()
    print("| device | network | mirroring | first case s | each further case s | peak GPU memory GiB "
          "(allocated / reserved) | GPU mask against the CPU path's |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    command = [sys.executable, "-m", "mixmicrobleednet.cli", "predict", "-i", str(input_dir),
               "-o", str(args.case / f"out-{args.device}"), "--device", args.device, "--fast"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"whole process `mixmicrobleednet predict --device {args.device} --fast` on the case: "
          f"{time.perf_counter() - started:.1f} s (start-up, model load, read, writing and QC picture included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
