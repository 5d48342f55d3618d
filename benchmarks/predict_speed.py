"""Per-case speed of our in-process predictor against nnUNetv2_predict, on the same model and cases.

    .venv/bin/python benchmarks/predict_speed.py [--work work/bench] [--model models/phantom-t1-t2-t2s] [--device cpu]
                                                 [--mirroring] [--cpu-runtime openvino|torch] [--cases N]
                                                 [--skip-regions]
    .venv/bin/python benchmarks/predict_speed.py --compare-runtimes [SEED_DIR] [--work ...] [--model ...] [--mirroring]
                                                 [--runtimes openvino openvino-accurate torch] [--reuse]

Makes three phantoms once (0.8x0.49x0.49 mm on a 192x512x512 grid, 3.5x0.45x0.45 mm, 3x1x1 mm;
--cases N: N phantoms, the three acquisitions in turn, the first on the big grid: a cohort), then
in one run times, each in a fresh process so that start-up counts as a user sees it:
  (a) ours: `mixmicrobleednet predict --no-regions` as the CLI runs it: one Model for the cohort,
      loaded while the first case is read and preprocessed; each next case read and preprocessed
      while the network runs;
  (b) nnUNetv2_predict on the same channels, already aligned on the T2* grid and written in
      nnU-Net's raw layout (not timed) — for a model folder its command is
      nnUNetv2_predict_from_modelfolder, the same predictor code;
then ours again with microbleed regions (the atlas registration nnUNetv2_predict has no part of;
--skip-regions: not);
checks that the masks are identical, and prints per-case stages (read+align, preprocess, network,
resample to the input grid, lesions, write), the network-only sliding-window time and its GFLOP/s
against the machine's fp32 peak (a matrix multiply, measured in the same run; cpu_network.py), peak
resident memory of each process tree, and a last line `speedup_vs_nnunetv2_predict=X.XX`. On a GPU
(--device cuda) the network's FLOP/s stand without a peak, and nvidia-smi's peak memory in use
during each tool's run is printed; with more than two cases, ours' steady-state seconds per case
(from the first record finished to the last). scripts/gpu-cohort.sh runs it on a lent GPU machine. Ours runs
with the package's default CPU runtime (PredictionSettings.cpu_runtime) unless --cpu-runtime says
another; the first line names the one its records name.

--compare-runtimes times nothing: it predicts the benchmark's cases (or the seed-layout cases of
SEED_DIR, e.g. held-out phantoms) once per CPU runtime (--runtimes: some of them; --reuse: keep the
outputs an earlier comparison left in --work), each with the CLI in a fresh process (--no-qc
--no-regions --save-probabilities), and prints per case, for each runtime against PyTorch's (torch),
whether the masks are identical (voxels that differ), the microbleeds each found, the largest probability difference, the
largest log-odds (logit) difference where the probability lies in [0.0067, 0.9933] (|log-odds| <= 5,
where the saved float32 probability still gives it to about 1e-5; around the threshold, the part
that decides the mask), and how close any voxel came to the threshold (the smallest |log-odds|);
a last line `runtime_masks_identical=True|False` (exit status 1 where they differ).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from mixmicrobleednet import records

REPO = Path(__file__).resolve().parents[1]
SEED = 7
BIG_GRID_XYZ = (512, 512, 192)  # the 0.8x0.49x0.49 mm case: 192 slices of 512x512


def _fit_to_grid(image: sitk.Image, size_xyz: tuple[int, int, int]) -> sitk.Image:
    """Pad (with 0: the scans are brain-masked) or crop symmetrically to `size_xyz`; the origin
    moves with it, so world positions are unchanged."""
    difference = np.subtract(size_xyz, image.GetSize())
    pad = np.maximum(difference, 0)
    image = sitk.ConstantPad(image, (pad // 2).tolist(), (pad - pad // 2).tolist(), 0)
    crop = np.maximum(-difference, 0)
    return sitk.Crop(image, (crop // 2).tolist(), (crop - crop // 2).tolist())


def prepare(work: Path, n_cases: int = 3) -> tuple[Path, Path, list[str]]:
    """`n_cases` phantoms in the seed layout and the same aligned channels in nnU-Net's raw layout."""
    from mixmicrobleednet import layout
    from mixmicrobleednet.cases import seed_cases
    from mixmicrobleednet.imaging import image_like, load_case
    from mixmicrobleednet.phantoms import generate

    seed_dir, raw_dir = work / "input", work / "nnunet-raw"
    done = work / "prepared-cases"  # the case stems, one a line
    if not done.is_file() or len(done.read_text().split()) != n_cases:
        for folder in (seed_dir, raw_dir):  # files of an older layout would be predicted too
            shutil.rmtree(folder, ignore_errors=True)
        cases = generate(seed_dir, n_cases, SEED, ["highres3d", "thickslice", "lowres"])
        big = cases[0]["subject"]
        stem = layout.case_stem(big)
        for path in [seed_dir / layout.input_name(stem, c) for c in layout.CHANNELS] + [seed_dir / layout.label_name(stem)]:
            sitk.WriteImage(_fit_to_grid(sitk.ReadImage(str(path)), BIG_GRID_XYZ), str(path), True)
        raw_dir.mkdir(parents=True, exist_ok=True)
        for case in seed_cases(seed_dir):
            stack = load_case(case)  # T1/T2 on the T2* grid exactly as ours aligns them
            for index in range(len(layout.CHANNELS)):
                sitk.WriteImage(image_like(stack.array[index], stack.reference),
                                str(raw_dir / f"{case.case_id}_{index:04d}.nii.gz"), True)
        done.write_text("\n".join(layout.case_stem(c["subject"]) for c in cases))
    return seed_dir, raw_dir, done.read_text().split()


def run_timed(command: list[str], log_path: Path, env: dict | None = None,
              gpu_memory: list[int] | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident GB of a command and all the processes it waited for;
    `gpu_memory`: gets the GPU memory in use (MiB, nvidia-smi) every 0.2 s while it runs."""
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        ended, sampler = threading.Event(), None
        if gpu_memory is not None:  # the sampler never waits on the process: wait4 below reaps it
            sampler = threading.Thread(target=_sample_gpu_memory, args=(ended, gpu_memory), daemon=True)
            sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        ended.set()
        if sampler:
            sampler.join()
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command[0]} failed; see {log_path}")
    return seconds, usage.ru_maxrss / 1024 ** 2  # kB → GB


def _sample_gpu_memory(ended: threading.Event, samples: list[int]) -> None:
    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]
    while not ended.wait(0.2):
        samples.append(int(subprocess.run(query, capture_output=True, text=True, check=True).stdout.split()[0]))


def _console(name: str) -> list[str]:
    """A console script of this Python's packages by its module, so that it runs where only the
    packages were unpacked (a lent GPU machine)."""
    module, function = {"mixmicrobleednet": ("mixmicrobleednet.cli", "main"),
                        "nnUNetv2_predict_from_modelfolder": ("nnunetv2.inference.predict_from_raw_data",
                                                              "predict_entry_point_modelfolder")}[name]
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bench")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "phantom-t1-t2-t2s")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (default: off, as --fast)")
    parser.add_argument("--cpu-runtime", help="ours on the CPU with this runtime (default: the package's default)")
    parser.add_argument("--cases", type=int, default=3, help="phantoms in the cohort (default 3: one per acquisition)")
    parser.add_argument("--skip-regions", action="store_true", help="no second run of ours with microbleed regions")
    parser.add_argument("--compare-runtimes", nargs="?", const=True, type=Path, metavar="SEED_DIR",
                        help="no timing: compare the CPU runtimes' masks and logits on the benchmark's cases or "
                             "SEED_DIR's")
    parser.add_argument("--runtimes", nargs="+", help="--compare-runtimes: these runtimes (default: all) against torch")
    parser.add_argument("--reuse", action="store_true",
                        help="--compare-runtimes: keep a runtime's outputs of an earlier comparison in --work")
    args = parser.parse_args()
    from mixmicrobleednet import layout

    if args.compare_runtimes:
        input_dir = prepare(args.work)[0] if args.compare_runtimes is True else args.compare_runtimes
        return 0 if compare_runtimes(input_dir, args.work, args.model, args.mirroring, args.runtimes, args.reuse) else 1
    seed_dir, raw_dir, subjects = prepare(args.work, args.cases)
    raw_cases = sorted({path.name.rsplit("_", 1)[0] for path in raw_dir.iterdir()})
    if raw_cases != sorted(subjects):  # both tools must get the same cases
        sys.exit(f"{raw_dir} holds {raw_cases}, not the prepared {subjects}: delete {args.work} and run again")
    ours_out, regions_out, theirs_out = (args.work / f"out-{name}" for name in ("ours", "ours-regions", "nnunetv2"))
    for folder in (ours_out, regions_out, theirs_out):
        shutil.rmtree(folder, ignore_errors=True)
    gpu = args.device.startswith("cuda")
    gpu_memory = {name: [] if gpu else None for name in ("ours", "nnunetv2") + (() if args.skip_regions else ("regions",))}

    # The same work as nnUNetv2_predict (masks; ours writes lesion tables and records too): no QC
    # pictures, no regions. The regions' atlas registration is timed in a second run.
    ours = [*_console("mixmicrobleednet"), "predict", "-i", str(seed_dir), "--model", str(args.model),
            "--device", args.device, "--no-qc"] + ([] if args.mirroring else ["--fast"]) + \
        (["--cpu-runtime", args.cpu_runtime] if args.cpu_runtime else [])
    ours_seconds, ours_gb = run_timed(ours + ["-o", str(ours_out), "--no-regions"], args.work / "ours.log",
                                      gpu_memory=gpu_memory["ours"])
    if not args.skip_regions:
        regions_seconds, _ = run_timed(ours + ["-o", str(regions_out)], args.work / "ours-regions.log",
                                       gpu_memory=gpu_memory["regions"])

    theirs = [*_console("nnUNetv2_predict_from_modelfolder"), "-i", str(raw_dir), "-o", str(theirs_out),
              "-m", str(args.model), "-f", "all", "-chk", "checkpoint_final.pth", "-device", args.device,
              "--disable_progress_bar"] + ([] if args.mirroring else ["--disable_tta"])
    env = {**os.environ, **{k: str(args.work / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
    theirs_seconds, theirs_gb = run_timed(theirs, args.work / "nnunetv2.log", env, gpu_memory["nnunetv2"])

    ours_records = {r["case_id"]: r for r in records.read_records(ours_out)}
    stages = _stages(ours_records.values())
    runtimes = {r["settings"]["prediction"].get("cpu_runtime", "torch") for r in ours_records.values()}
    print(f"device {args.device}, mirroring {'on' if args.mirroring else 'off'}, model {args.model}, "
          f"ours on the CPU runtime {', '.join(sorted(runtimes))}, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, {os.cpu_count()} CPUs")
    print("read and preprocess (*: ahead): in a thread, while the model loads (first case) or the network runs "
          "(the others)")
    print(f"{'case':20} {'grid (x,y,z)':>16} {'read':>6} {'preproc':>8} {'network':>8} {'tiles':>9} "
          f"{'resample':>9} {'lesions':>8} {'write':>6}  masks   (tiles: +N rechecked in float32)")
    identical = True
    for subject in subjects:
        ours_mask = sitk.ReadImage(str(layout.prediction_path(ours_out, subject)))
        theirs_mask = sitk.ReadImage(str(theirs_out / f"{subject}{layout.NIFTI}"))
        differing, set_aside = _masks_differ(ours_mask, theirs_mask, ours_records[subject])
        identical &= differing == 0
        s = stages[subject]
        print(f"{subject:20} {'x'.join(map(str, ours_mask.GetSize())):>16} {s['read']:6.1f} {s['preprocess']:7.1f}{'*' if s['preprocessed_ahead'] else ' '} "
              f"{s['network']:8.1f} {s['tiles']:4d}{'+' + str(s['tiles_rechecked']) if s.get('tiles_rechecked') else '':<5} "
              f"{s['resample']:9.1f} {s['lesions']:8.1f} {s['write']:6.1f}  "
              + ("identical" if differing == 0 else f"DIFFERENT ({differing} voxels)")
              + (f", but for {set_aside} mark(s) the tool set aside (record)" if set_aside else ""))
    network = sum(s["network"] for s in stages.values())
    print(f"ours (whole process, start-up included): {ours_seconds:.1f} s, peak RSS {ours_gb:.2f} GB; "
          f"network-only sliding window {network:.1f} s; outside the network {ours_seconds - network:.1f} s "
          f"({(ours_seconds - network) / ours_seconds:.0%})")
    if len(subjects) > 2:
        finished = sorted(datetime.fromisoformat(r["finished"]) for r in ours_records.values())
        print(f"ours, steady state: {(finished[-1] - finished[0]).total_seconds() / (len(finished) - 1):.2f} s per "
              f"case (first to last record finished, 1 s resolution)")
    import torch
    from cpu_network import fp32_peak_gflops, gflop_per_tile
    from mixmicrobleednet.model import Model, PredictionSettings

    # PyTorch's modules on the CPU to count the convolutions' FLOP; the same network whatever runs it
    model = Model(args.model, "cpu", PredictionSettings(use_mirroring=False, cpu_runtime="torch"))
    per_tile = gflop_per_tile(model.predictor.network, tuple(model.predictor.configuration_manager.patch_size),
                              len(model.folder.channels))
    # openvino-checked's reruns in float32 are network passes too
    achieved = per_tile * sum((s["tiles"] + s.get("tiles_rechecked", 0)) * s["passes_per_tile"]
                              for s in stages.values()) / network
    if gpu:
        print(f"network: {achieved / 1000:.2f} TFLOP/s ({per_tile:.2f} GFLOP per tile and pass; network stage: "
              f"sliding window and logits back to the CPU)")
    else:
        peak = fp32_peak_gflops()
        print(f"network: {achieved:.1f} GFLOP/s ({per_tile:.2f} GFLOP per tile), {achieved / peak:.0%} of the "
              f"fp32 peak of {peak:.0f} GFLOP/s (matmul, {torch.get_num_threads()} threads)")
    print(f"nnUNetv2_predict (whole process tree): {theirs_seconds:.1f} s, peak RSS {theirs_gb:.2f} GB")
    if gpu:
        print("peak GPU memory in use (nvidia-smi, MiB): " + ", ".join(
            f"{name} {max(samples, default=0)}" for name, samples in gpu_memory.items()))
    if not args.skip_regions:
        located = [s["regions"] for s in _stages(records.read_records(regions_out)).values() if "regions" in s]
        print(f"ours with microbleed regions (default; atlas registered on each case with microbleeds: "
              f"{', '.join(f'{s:.1f}' for s in located)} s): {regions_seconds:.1f} s, "
              f"{theirs_seconds / regions_seconds:.2f}x nnUNetv2_predict's time")
    print(f"masks identical: {identical}")
    print(f"speedup_vs_nnunetv2_predict={theirs_seconds / ours_seconds:.2f}")
    return 0 if identical else 1


def compare_runtimes(input_dir: Path, work: Path, model: Path, mirroring: bool, runtimes: list[str] | None = None,
                     reuse: bool = False) -> bool:
    """Predict `input_dir` once per CPU runtime (CLI, fresh processes; `reuse`: keep the outputs an
    earlier call left in `work` where they exist) and compare each runtime's masks, microbleed counts,
    probabilities and log-odds per case against PyTorch's; True where every mask is identical."""
    from mixmicrobleednet.options import CPU_RUNTIMES

    reference = "torch"
    runtimes = [r for r in runtimes or CPU_RUNTIMES if r != reference] + [reference]
    outputs = {}
    work.mkdir(parents=True, exist_ok=True)  # with SEED_DIR nothing else makes it
    for runtime in runtimes:
        out = work / f"out-runtime-{runtime}"
        if not (reuse and records.read_records(out)):
            shutil.rmtree(out, ignore_errors=True)
            command = [*_console("mixmicrobleednet"), "predict", "-i", str(input_dir), "-o", str(out), "--model",
                       str(model), "--device", "cpu", "--no-qc", "--no-regions", "--save-probabilities",
                       "--cpu-runtime", runtime] + ([] if mirroring else ["--fast"])
            seconds, _ = run_timed(command, work / f"runtime-{runtime}.log")
            print(f"{runtime}: predicted in {seconds:.1f} s (not a timing: probabilities written, machine not "
                  f"reserved)", flush=True)
        outputs[runtime] = {r["case_id"]: (out, r) for r in records.read_records(out)}
        used = {r["settings"]["prediction"].get("cpu_runtime") for _, r in outputs[runtime].values()}
        if used != {runtime}:
            sys.exit(f"{out} holds predictions of the runtime(s) {used}, not {runtime}: run without --reuse")
    identical = True
    for tested in runtimes[:-1]:
        print(f"model {model}, input {input_dir}, mirroring {'on' if mirroring else 'off'}: {tested} against "
              f"{reference}")
        print(f"{'case':24} {'masks':>9} {'voxels differing':>17} {'microbleeds':>12} {'max |dp|':>9} "
              f"{'max |dlogit|':>13} {'min |logit|':>12}")
        worst = {"p": 0.0, "logit": 0.0, "closest": np.inf, "differing": 0}
        for case_id in sorted(outputs[reference]):
            if case_id not in outputs[tested]:
                print(f"{case_id:24} missing from {tested}'s output")
                identical = False
                continue
            (ours_dir, ours), (their_dir, theirs) = outputs[tested][case_id], outputs[reference][case_id]
            masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(d / r["outputs"]["mask"])))
                     for d, r in ((ours_dir, ours), (their_dir, theirs))]
            differing = int(np.count_nonzero(masks[0] != masks[1]))
            identical &= differing == 0
            del masks
            p_ours, p_theirs = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / r["outputs"]["probability"])))
                                for d, r in ((ours_dir, ours), (their_dir, theirs)))
            largest_dp = float(np.abs(p_ours - p_theirs).max())
            # log-odds from the saved float32 probabilities, near the threshold only (|log-odds| <= 5):
            # there 1 - p keeps enough bits; far from it the mask cannot change
            near = (p_theirs >= 0.0067) & (p_theirs <= 0.9933)
            logit = [np.log(p) - np.log1p(-p) for p in (p_ours[near].astype(np.float64),
                                                         p_theirs[near].astype(np.float64))]
            largest_dlogit = float(np.abs(logit[0] - logit[1]).max()) if near.any() else 0.0
            closest = float(np.abs(logit[1]).min()) if near.any() else np.inf
            worst = {"p": max(worst["p"], largest_dp), "logit": max(worst["logit"], largest_dlogit),
                     "closest": min(worst["closest"], closest), "differing": worst["differing"] + differing}
            print(f"{case_id:24} {'identical' if differing == 0 else 'DIFFERENT':>9} {differing:17d} "
                  f"{ours['microbleed_count']:>5} / {theirs['microbleed_count']:<4} {largest_dp:9.1e} "
                  f"{largest_dlogit:13.1e} {closest:12.1e}", flush=True)
        print(f"{tested}, all cases: {worst['differing']} mask voxels differ; largest probability difference "
              f"{worst['p']:.1e}, largest log-odds difference near the threshold {worst['logit']:.1e}, closest "
              f"log-odds to the threshold ({reference}) {worst['closest']:.1e}")
    print(f"runtime_masks_identical={identical}")
    return identical


def _masks_differ(ours: sitk.Image, theirs: sitk.Image, record: dict) -> tuple[int, int]:
    """Voxels where our mask and nnU-Net's differ, but for whole components of nnU-Net's mask that
    our run set aside (the edge rule, the mimic check: in the record, not in the mask); and how many
    such marks there were."""
    from scipy import ndimage

    from mixmicrobleednet.decisions import set_aside_marks
    from mixmicrobleednet.lesions import WORLD_COLUMNS, label_microbleeds

    ours_array, theirs_array = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)
    differ = ours_array != theirs_array
    if not differ.any():
        return 0, 0
    marks = np.array([[m[c] for c in WORLD_COLUMNS] for m in set_aside_marks(record)]).reshape(-1, 3)
    labels, _ = label_microbleeds(theirs_array)
    explained = 0
    for label in np.unique(labels[differ & (labels > 0)]):
        component = labels == label
        if ours_array[component].any():
            continue  # partly ours: a difference in the network or resampling, not a mark set aside
        centre_zyx = ndimage.center_of_mass(component)
        ras = np.multiply(theirs.TransformContinuousIndexToPhysicalPoint(centre_zyx[::-1]), [-1, -1, 1])
        if len(marks) and np.abs(marks - ras).max(axis=1).min() <= 0.05:  # the record rounds to 0.01 mm
            differ &= ~component
            explained += 1
    return int(np.count_nonzero(differ)), explained


def _stages(case_records) -> dict[str, dict[str, float]]:
    """Per-case stage seconds (read, preprocess, network, resample, lesions, write, regions) and the
    network's tiles, passes per tile, tiles rechecked and whether the case was preprocessed ahead, from the
    records."""
    return {r["case_id"]: {**r["stage_seconds"], **r["network"]} for r in case_records}


if __name__ == "__main__":
    sys.exit(main())
