"""Compare outputs with the expected ones (test.sh).

    python -m mixmicrobleednet.regression EXPECTED_DIR ACTUAL_DIR
    python -m mixmicrobleednet.regression --identical-masks MASK MASK   (e.g. .nii.gz vs .mha)

results.json must be equal; every expected image must exist with the same grid, pixel type and
number of microbleeds; every expected table (lesions, summary) with the same columns, number of rows
and text columns (subject, status, message); every expected QC picture as a PNG. Voxels may differ only at a few mask borders, because float sums differ
between CPU instruction sets (AVX2 vs AVX-512): at most MAX_DIFFERING_FRACTION of the masks' voxels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .lesions import label_microbleeds

MAX_DIFFERING_FRACTION = 0.01


def _grid(image: sitk.Image) -> tuple:
    return (image.GetSize(), np.round(image.GetSpacing(), 6).tolist(), np.round(image.GetOrigin(), 4).tolist(),
            np.round(image.GetDirection(), 6).tolist(), image.GetPixelIDTypeAsString())


def _same_json(actual, expected) -> bool:
    """Equal, except that floats (volumes) may differ as much as the masks may."""
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return abs(actual - expected) <= MAX_DIFFERING_FRACTION * max(abs(expected), 1.0)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(map(_same_json, actual, expected))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return actual.keys() == expected.keys() and all(_same_json(actual[k], expected[k]) for k in expected)
    return type(actual) is type(expected) and actual == expected


def identical_masks(first: Path, second: Path) -> list[str]:
    """The same grid and the same voxels (the two input layouts on the same case)."""
    a, b = sitk.ReadImage(str(first)), sitk.ReadImage(str(second))
    if _grid(a) != _grid(b):
        return [f"grids differ: {first.name} {_grid(a)} vs {second.name} {_grid(b)}"]
    differing = int((sitk.GetArrayViewFromImage(a) != sitk.GetArrayViewFromImage(b)).sum())
    print(f"{first.name} and {second.name}: {differing} differing voxels")
    return [f"{differing} voxels differ between {first.name} and {second.name}"] if differing else []


def compare(expected_dir: Path, actual_dir: Path) -> list[str]:
    """Differences as sentences; empty when the outputs match."""
    problems = []
    for json_file in sorted(expected_dir.rglob("*.json")):
        actual = actual_dir / json_file.relative_to(expected_dir)
        if not actual.is_file():
            problems.append(f"missing {actual.relative_to(actual_dir)}")
        elif not _same_json(json.loads(actual.read_text()), json.loads(json_file.read_text())):
            problems.append(f"{json_file.name} differs:\n{actual.read_text()}")
    for image_file in sorted(p for p in expected_dir.rglob("*") if p.name.endswith((".nii.gz", ".mha"))):
        actual_file = actual_dir / image_file.relative_to(expected_dir)
        if not actual_file.is_file():
            problems.append(f"missing {actual_file.relative_to(actual_dir)}")
            continue
        expected, actual = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(actual_file))
        if _grid(expected) != _grid(actual):
            problems.append(f"{image_file.name}: grid or type {_grid(actual)} != expected {_grid(expected)}")
            continue
        e, a = sitk.GetArrayViewFromImage(expected) > 0, sitk.GetArrayViewFromImage(actual) > 0
        count_e, count_a = label_microbleeds(e)[1], label_microbleeds(a)[1]
        differing = int((e != a).sum())
        union = max(int((e | a).sum()), 1)
        print(f"{image_file.name}: {count_a} microbleeds (expected {count_e}), {differing} differing voxels "
              f"of {union} in the masks")
        if count_e != count_a:
            problems.append(f"{image_file.name}: {count_a} microbleeds, expected {count_e}")
        if differing / union > MAX_DIFFERING_FRACTION:
            problems.append(f"{image_file.name}: {differing} voxels differ ({differing / union:.1%} of the masks)")
    for table_file in sorted(expected_dir.rglob("*.csv")):
        actual_file = actual_dir / table_file.relative_to(expected_dir)
        if not actual_file.is_file():
            problems.append(f"missing {actual_file.relative_to(actual_dir)}")
            continue
        expected, actual = pd.read_csv(table_file), pd.read_csv(actual_file)
        text_columns = [c for c in expected.columns if expected[c].dtype == object]
        if list(actual.columns) != list(expected.columns) or len(actual) != len(expected):
            problems.append(f"{table_file.name}: {len(actual)} rows of {list(actual.columns)}, "
                            f"expected {len(expected)} rows of {list(expected.columns)}")
        elif not actual[text_columns].fillna("").equals(expected[text_columns].fillna("")):
            problems.append(f"{table_file.name}: {text_columns} differ")
    for picture in sorted(expected_dir.rglob("*.png")):
        actual_file = actual_dir / picture.relative_to(expected_dir)
        if not actual_file.is_file() or actual_file.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            problems.append(f"missing or not a PNG: {actual_file.relative_to(actual_dir)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--identical-masks"]:
        problems = identical_masks(Path(argv[1]), Path(argv[2]))
    else:
        problems = compare(Path(argv[0]), Path(argv[1]))
    for problem in problems:
        print(f"DIFFERENCE: {problem}")
    print("outputs match" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
