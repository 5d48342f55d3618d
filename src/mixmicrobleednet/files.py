"""Atomic writes: every output is written under a hidden temporary name and renamed when complete,
so a reader never sees a half-written file and a killed writer leaves only a partial to remove."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import SimpleITK as sitk

PARTIAL = ".partial-"  # in the name of a file being written


def _partial_name(path: Path, writer: str) -> str:
    """The hidden name `path` is written under by `writer` (a process id, or * to match any); it
    keeps the suffix, since writers pick the format by it."""
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    return f".{path.name[: len(path.name) - len(suffix)]}{PARTIAL}{writer}{suffix}"


def remove_partials(path: Path) -> None:
    """Remove what a killed process left half-written of `path` (before it is written again)."""
    for stale in path.parent.glob(_partial_name(path, "*")):
        stale.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder to write to; rename it to `path` only when the
    writing finished, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(_partial_name(path, str(os.getpid())))
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_image_atomic(image: sitk.Image, path: Path) -> None:
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)


def write_json_value(value, path: Path, indent: int | None = None) -> None:
    """A Grand-Challenge value socket (the bare JSON value in its own file), a JSON sidecar, or a
    model folder's JSON file (indented)."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(value, indent=indent))


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One holder at a time: an exclusive flock on the folder itself (created; no lock file to leave behind)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
