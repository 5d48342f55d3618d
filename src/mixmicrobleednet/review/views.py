"""What the case page's viewer loads: a cube of the T2* scan and of the mask around a point, at full
resolution and in world coordinates, instead of the whole scan. A WebGL viewer uploads every voxel it
is given as a 3D texture, and without a GPU (SwiftShader) that costs seconds per 10 million voxels:
a 192x512x512 scan with its mask took 30 s to show, a 60 mm cube a fraction of a second. The whole
scan stays one key away (the page's "whole scan" view loads the files themselves).

A case's images are read once (side by side) and kept for the last few cases; the first case of the
cohort page and the next case in the rater's order are read ahead.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

#: The edge of the cube the viewer shows around a detection (mm): a microbleed and its surroundings.
VIEW_MM = 60.0
KEPT_CASES = 3


class CaseImages:
    """The viewer's images of the last few cases (each path read once; a case's scan and mask are read
    side by side, as the page asks for both at once)."""

    def __init__(self):
        self._images: OrderedDict[tuple, sitk.Image] = OrderedDict()
        self._lock = threading.Lock()
        self._reading: dict[tuple, threading.Lock] = {}
        self._folder = tempfile.TemporaryDirectory(prefix="mixmicrobleednet-review-")

    def image(self, path: Path) -> sitk.Image:
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            reading = self._reading.setdefault(key, threading.Lock())
        with reading:  # one reader per file; the others wait for its image
            with self._lock:
                if key in self._images:
                    self._images.move_to_end(key)
                    return self._images[key]
            image = sitk.ReadImage(str(path))
            with self._lock:
                self._images[key] = image
                while len(self._images) > 2 * KEPT_CASES:
                    self._images.popitem(last=False)
                self._reading.pop(key, None)
            return image

    def read_ahead(self, paths: dict[str, Path]) -> None:
        def read(path: Path):
            try:
                self.image(path)
            except (OSError, RuntimeError) as exc:  # shown when the case is opened
                log.debug("reading ahead %s: %s", path, exc)

        for path in paths.values():
            threading.Thread(target=read, args=(path,), daemon=True).start()

    def cube(self, paths: dict[str, Path], kind: str, centre_ras: tuple[float, float, float],
             size_mm: float = VIEW_MM) -> bytes:
        """An uncompressed NIfTI of the image `kind` within size_mm/2 of the point (RAS mm) on each
        axis of its grid, clipped to the image; its header places it where it lies in the scan."""
        image = self.image(paths[kind])
        centre = image.TransformPhysicalPointToContinuousIndex((-centre_ras[0], -centre_ras[1], centre_ras[2]))
        half = np.ceil(size_mm / 2 / np.array(image.GetSpacing())).astype(int)
        size = np.array(image.GetSize())
        low = np.clip(np.round(centre).astype(int) - half, 0, size - 1)
        high = np.clip(np.round(centre).astype(int) + half + 1, low + 1, size)
        cropped = sitk.RegionOfInterest(image, (high - low).tolist(), low.tolist())
        with tempfile.NamedTemporaryFile(suffix=".nii", dir=self._folder.name) as handle:
            sitk.WriteImage(cropped, handle.name, False)
            return Path(handle.name).read_bytes()
