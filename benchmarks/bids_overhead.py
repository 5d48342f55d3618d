"""What the BIDS path costs: indexing a large BIDS tree, and one case through `mixmicrobleednet bids`
against the same case through `mixmicrobleednet predict` (seed folder).

    .venv/bin/python benchmarks/bids_overhead.py [--work work/bids-bench] [--subjects 1000] [--repeats 3]

1. Writes a BIDS tree of N subjects (every third with two sessions; T1w, T2w, T2starw and a JSON
   sidecar each, all empty files: indexing reads names only) once, then times case discovery as
   the BIDS App does it (mixmicrobleednet.bids.bids_cases: the folders walked, names parsed by
   pybids) over the whole tree (the group level) and for one participant (an array task), and
   pybids' own index of the tree (BIDSLayout, validate=False, no metadata), each in a fresh process.
2. Writes the shipped test case (test/input) once as a seed folder and once as a one-subject BIDS
   dataset and times the whole command, in fresh processes, `repeats` times each (the shipped
   weights, --fast, CPU); checks that both give the same mask. Prints the medians, the difference
   per subject and `bids_over_seed=X.XX`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mixmicrobleednet import layout  # noqa: E402


def write_tree(root: Path, subjects: int) -> int:
    if (root / layout.DATASET_DESCRIPTION).is_file():
        return sum(1 for _ in root.glob("sub-*/**/anat/*_T2starw.nii.gz"))
    root.mkdir(parents=True)
    (root / layout.DATASET_DESCRIPTION).write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.1"}))
    visits = 0
    for number in range(1, subjects + 1):
        for session in (("1", "2") if number % 3 == 0 else (None,)):
            anat = root / layout.bids_anat_dir(f"{number:04d}", session)
            anat.mkdir(parents=True)
            for channel in layout.CHANNELS:
                name = layout.bids_image_name(f"{number:04d}", session, channel)
                (anat / name).touch()
                (anat / name.replace(layout.BIDS_IMAGE_EXTENSIONS[0], ".json")).write_text("{}")
            visits += 1
    return visits


def time_discovery(root: Path, participants: tuple[str, ...]) -> tuple[float, int]:
    code = ("import sys, time; from pathlib import Path; t = time.perf_counter(); "
            "from mixmicrobleednet.bids import bids_cases; from mixmicrobleednet import layout; "
            f"cases = bids_cases(Path({str(root)!r}), layout.CHANNELS, {participants!r}); "
            "print(time.perf_counter() - t, len(cases))")
    seconds, count = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(seconds), int(count)


def time_pybids_layout(root: Path) -> float:
    code = ("import time; t = time.perf_counter(); from bids import BIDSLayout, BIDSLayoutIndexer; "
            f"BIDSLayout({str(root)!r}, validate=False, indexer=BIDSLayoutIndexer(index_metadata=False)); "
            "print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def time_command(arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mixmicrobleednet.cli", *arguments], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "work" / "bids-bench")
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tree = args.work / f"tree-{args.subjects}"
    visits = write_tree(tree, args.subjects)
    whole, found = time_discovery(tree, ())
    one, found_one = time_discovery(tree, (f"{args.subjects // 2:04d}",))
    print(f"BIDS tree: {args.subjects} subjects, {visits} T2starw images")
    print(f"cases, whole tree (group level): {whole:.2f} s, {found} cases")
    print(f"cases, one participant (array task): {one:.2f} s, {found_one} case(s)")
    print(f"pybids BIDSLayout of the whole tree: {time_pybids_layout(tree):.2f} s")

    seed, bids = args.work / "seed", args.work / "bids"
    for folder in (seed, bids):
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(REPO / "test" / "input", seed)
    bids.mkdir(parents=True)
    (bids / layout.DATASET_DESCRIPTION).write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.1"}))
    stem = layout.parse_input_name(next(seed.glob("*_T2S.nii.gz")).name)["stem"]
    subject = layout.parse_stem(stem)["subject"]
    anat = bids / layout.bids_anat_dir(subject, None)
    anat.mkdir(parents=True)
    for channel in layout.CHANNELS:
        shutil.copy(seed / layout.input_name(stem, channel), anat / layout.bids_image_name(subject, None, channel))
    common = ["--device", "cpu", "--fast"]
    seed_runs, bids_runs = [], []
    for repeat in range(args.repeats):
        for folder in ("seed-out", "bids-out"):
            shutil.rmtree(args.work / folder, ignore_errors=True)
        seed_runs.append(time_command(["predict", "-i", str(seed), "-o", str(args.work / "seed-out"), *common]))
        bids_runs.append(time_command(["bids", str(bids), str(args.work / "bids-out"), "participant", *common]))
    seed_mask = sitk.ReadImage(str(layout.prediction_path(args.work / "seed-out", stem)))
    bids_mask = sitk.ReadImage(str(args.work / "bids-out" / layout.bids_output_paths({"subject": subject})["mask"]))
    same = np.array_equal(sitk.GetArrayFromImage(seed_mask), sitk.GetArrayFromImage(bids_mask))
    seed_median, bids_median = statistics.median(seed_runs), statistics.median(bids_runs)
    print(f"one case, whole command, median of {args.repeats}: seed folder {seed_median:.2f} s, "
          f"BIDS {bids_median:.2f} s (runs: {[round(s, 2) for s in seed_runs]} / {[round(s, 2) for s in bids_runs]})")
    print(f"BIDS overhead per subject: {bids_median - seed_median:+.2f} s; same mask: {same}")
    print(f"bids_over_seed={bids_median / seed_median:.2f}")


if __name__ == "__main__":
    main()
