"""What `--precision bfloat16` does to held-out detection numbers, measurable on any CPU.

    .venv/bin/python benchmarks/bfloat16_effect.py --cases work/phantoms-test --out work/bf16 \
        [--model models/phantom-t1-t2-t2s] [--check-tiles 2] [--emulate]

On a CPU with bfloat16 instructions (AMX, AVX-512 BF16) the cases are predicted with the flag
itself. Elsewhere the real thing takes 12-30 s per tile (float32: 0.1 s), so `--emulate`
reproduces its arithmetic in float32: as torch.autocast does on the CPU, every (transposed)
convolution takes its input, weights and bias rounded to bfloat16, accumulates in float32 and
rounds its output to bfloat16; the instance normalisation's statistics are computed in bfloat16
from those values, as under autocast (its affine step promotes to float32, as there). Before the cases, the `--check-tiles` tiles of the
first case with microbleeds that hold the most voxels near the threshold go through float32, the
emulation and the real autocast, and the differences between them are printed: the emulation stands for the flag only as far as it agrees
with the real autocast, which the check shows.

Both ways run through the same pipeline (runner.prepare_run(...).execute(FunctionPredictor(...))), with
mirroring off (`--fast`), and are scored with `evaluate` against the phantoms' labels; prints
sensitivity, false positives per scan and Dice for float32 and bfloat16, and how many voxels'
masks differ.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from mixmicrobleednet import PredictionSettings, layout
from mixmicrobleednet.evaluate import evaluate_folders
from mixmicrobleednet.cpu_network import cpu_network as _cpu_network
from mixmicrobleednet.device import cpu_has_bfloat16 as _cpu_has_bfloat16
from mixmicrobleednet.model import Model
from mixmicrobleednet.pipeline import FunctionPredictor
from mixmicrobleednet.report import OutputSettings
from mixmicrobleednet.runner import RunOptions, prepare_run

REPO = Path(__file__).resolve().parents[1]


def _bf16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to bfloat16 (nearest even, as autocast's casts) and keep them in float32."""
    return x.to(torch.bfloat16).float()


def emulated_bfloat16(network: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of cpu_network.py's network that rounds where autocast's bfloat16 would."""
    network = copy.deepcopy(network)
    convolutions = [m for m in network.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.no_grad():
        for conv in convolutions:
            conv.weight.copy_(_bf16(conv.weight))
            if conv.bias is not None:
                conv.bias.copy_(_bf16(conv.bias))
    for conv in convolutions:
        conv.register_forward_pre_hook(lambda module, args: (_bf16(args[0]),))
        conv.register_forward_hook(lambda module, args, output: _bf16(output))
    norms = [m for m in network.modules() if type(m).__name__ == "InstanceNorm" and hasattr(m, "eps")]
    if not norms:
        raise RuntimeError("cpu_network.py's instance normalisation not found: update the emulation")
    for norm in norms:
        def forward(x, norm=norm):
            # cpu_network.py's InstanceNorm.forward as it runs under autocast: its input is a convolution's
            # bfloat16 output, so its statistics come from the same bfloat16 kernels (a last-bit
            # difference in a float32 variance can flip its bfloat16 rounding and move every voxel).
            variance, mean = torch.var_mean(x.to(torch.bfloat16), dim=(2, 3, 4), keepdim=True, correction=0)
            scale = norm.weight.view(1, -1, 1, 1, 1) * torch.rsqrt(variance + norm.eps)
            return torch.addcmul(norm.bias.view(1, -1, 1, 1, 1) - mean * scale, x, scale)
        norm.forward = forward
    return network


def check_tiles(model: Model, float32_network, emulated, case_dir: Path, count: int) -> dict:
    """Largest logit differences on the `count` tiles of the first case with microbleeds where the
    float32 network has the most voxels near the threshold: emulation vs real autocast, and float32
    vs both."""
    stem = sorted(s for s in map(layout.parse_label_name, (p.name for p in case_dir.glob("*.nii.gz")))
                  if s and sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / layout.label_name(s)))).any())[0]
    images = [sitk.ReadImage(str(case_dir / layout.input_name(stem, c))) for c in model.folder.channels]
    channels = np.stack([sitk.GetArrayFromImage(i).astype(np.float32) for i in images])
    data = model.preprocessing.preprocess(channels, images[0].GetSpacing()[::-1]).data
    slicers = model.predictor._internal_get_sliding_window_slicers(data.shape[1:])
    near_threshold = []
    with torch.inference_mode():
        for start in range(0, len(slicers), 4):
            batch = torch.from_numpy(np.stack([data[t] for t in slicers[start:start + 4]]))
            logits = float32_network(batch.contiguous(memory_format=torch.channels_last_3d))
            near_threshold += ((logits[:, 1] - logits[:, 0]).abs() < 4).flatten(1).sum(1).tolist()
    chosen = np.argsort(near_threshold)[::-1][:count]
    x = torch.from_numpy(np.stack([data[slicers[i]] for i in chosen])).contiguous(memory_format=torch.channels_last_3d)
    real, _ = _cpu_network(copy.deepcopy(float32_network), "bfloat16")
    with torch.inference_mode():
        started = time.perf_counter()
        out_real = real(x)
        real_seconds = (time.perf_counter() - started) / count
        out_fp32, out_emulated = float32_network(x), emulated(x)

    def margin(o):  # the microbleed log-odds, what the mask thresholds at 0
        return o[:, 1] - o[:, 0]

    # bfloat16 keeps 8 significant bits: a logit of 40 moves in steps of 0.25, one near 0 in far
    # smaller ones, so the differences that can change a mask are those near the threshold.
    near = margin(out_real).abs() < 4
    result = {"case": stem, "tiles": count, "real_bfloat16_seconds_per_tile": round(real_seconds, 2),
              "voxels_margin_under_4": int(near.sum())}
    for name, a, b in (("emulated_vs_real", out_emulated, out_real), ("float32_vs_real", out_fp32, out_real),
                       ("float32_vs_emulated", out_fp32, out_emulated)):
        difference = (margin(a) - margin(b)).abs()
        result.update({f"margin_diff_{name}_max": float(difference.max()),
                       f"margin_diff_{name}_mean": float(difference.mean()),
                       f"margin_diff_{name}_max_where_under_4": float(difference[near].max()) if near.any() else 0.0,
                       f"voxels_sign_differs_{name}": int(((margin(a) > 0) != (margin(b) > 0)).sum())})
    return result


def predict_and_score(cases: Path, out: Path, model: Model, network, name: str) -> dict:
    model.predictor.network = network
    options = RunOptions(model=model.folder.path, device="cpu", prediction=model.settings,
                         output=OutputSettings(save_probabilities=False, qc_picture=False, regions=False))
    started = time.perf_counter()
    prepare_run(cases, out / name, options).execute(
        FunctionPredictor(lambda stack, folder: model.predict_probabilities(stack.array, stack.spacing_zyx)))
    seconds = time.perf_counter() - started
    cohorts = cases / "phantoms.csv"
    summary = evaluate_folders(cases, out / name, out / f"eval-{name}", cohorts if cohorts.is_file() else None)
    row = summary.loc["all"]
    return {"seconds": round(seconds, 1), "sensitivity": float(row["sensitivity"]),
            "false_positives_per_scan": float(row["false_positives_per_scan"]), "dice": float(row["dice_cases_with_microbleeds"])}


def mask_differences(out: Path) -> dict:
    changed, total = 0, 0
    for path in sorted((out / "float32" / layout.IMAGES_DIR).glob(f"*{layout.prediction_name('')}")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "bfloat16" / layout.IMAGES_DIR / path.name)))
        changed, total = changed + int((a != b).sum()), total + int(((a > 0) | (b > 0)).sum())
    return {"mask_voxels_changed": changed, "mask_voxels_in_either": total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, required=True, help="phantoms (labels beside the scans)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "phantom-t1-t2-t2s")
    parser.add_argument("--check-tiles", type=int, default=2)
    parser.add_argument("--emulate", action="store_true", help="emulate bfloat16 in float32 (CPUs without it)")
    args = parser.parse_args(argv)
    if not args.emulate and not _cpu_has_bfloat16():
        parser.error("this CPU has no bfloat16 instructions: the real flag takes days here; add --emulate")
    model = Model(args.model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="torch"))  # PyTorch modules
    float32_network = model.predictor.network
    results = {"cpu_has_bfloat16": _cpu_has_bfloat16(), "emulated": args.emulate}
    if args.emulate:
        bfloat16_network = emulated_bfloat16(float32_network)
        if args.check_tiles:
            results["check"] = check_tiles(model, float32_network, bfloat16_network, args.cases, args.check_tiles)
            print(json.dumps(results["check"], indent=1), flush=True)
    else:
        bfloat16_network, _ = _cpu_network(copy.deepcopy(float32_network), "bfloat16")
    for name, network in (("float32", float32_network), ("bfloat16", bfloat16_network)):
        results[name] = predict_and_score(args.cases, args.out, model, network, name)
        print(name, json.dumps(results[name]), flush=True)
    results.update(mask_differences(args.out))
    (args.out / "bfloat16_effect.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
