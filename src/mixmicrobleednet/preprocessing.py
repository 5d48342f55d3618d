"""nnU-Net v2's crop and resampling, computed with less work and giving the same numbers.

nnU-Net (2.8.1, pinned) finds the brain box by filling holes in the nonzero mask with repeated
binary dilations (here: brain.fill_holes, one labelling), and resizes with skimage:
`scipy.ndimage.zoom` over all axes at once (4**3 taps per voxel for order 3), or for anisotropic
scans slice by slice and then along z with `map_coordinates`. Here the resize runs as one 1-D
B-spline per axis (4 taps each): the spline is a tensor product, so the values are the same up to
float64 rounding (~1e-15; of the float32 results about 3 in 100,000 differ from
nnU-Net's, in the last bit). tests/test_preprocessing.py compares every step with nnU-Net's own
functions, and tests/test_model_speed.py the resulting masks.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import reduce

import numpy as np
from scipy import ndimage, sparse

from .brain import fill_holes

#: scipy.ndimage.zoom pads this many edge values before the spline prefilter for mode "nearest"
#: (skimage's "edge"), so the prefilter's own boundary rule hardly reaches the image.
_SPLINE_PREPAD = 12


def crop_to_nonzero(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """nnU-Net's crop_to_nonzero for a (channel, z, y, x) image without segmentation: the box
    around voxels nonzero in any channel, and within it (int8) 0 for the brain (nonzero voxels
    with holes filled) and -1 outside, which z-score normalisation with a mask reads."""
    nonzero = data[0] != 0
    for channel in data[1:]:
        nonzero |= channel != 0
    # acvl_utils' get_bbox_from_mask, from one projection per axis (its box of an empty mask: all)
    bbox = []
    for axis, size in enumerate(nonzero.shape):
        found = np.flatnonzero(np.any(nonzero, axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        bbox.append([int(found[0]), int(found[-1]) + 1] if len(found) else [0, size])
    box = tuple(slice(start, stop) for start, stop in bbox)
    # Holes lie inside the box, so filling them cannot widen it; outside the box is all
    # background, so a hole of the box is one of the volume.
    seg = np.where(fill_holes(nonzero[box]), np.int8(0), np.int8(-1))[None]
    return data[(slice(None), *box)], seg, bbox


def resample_separable(data: np.ndarray, new_shape: tuple[int, ...], lowres_axis: int | None, order: int = 3,
                       order_z: int = 0, workers: int | None = None) -> np.ndarray:
    """nnU-Net's resampling of a (channel, z, y, x) array to `new_shape` once its rule chose the
    low-resolution axis to resample on its own (`lowres_axis`; None: all axes alike), float32 out
    (nnunet_glue.resample_to_shape applies the rule).

    nnU-Net resizes an anisotropic scan slice by slice across its low-resolution axis (skimage
    clips each slice to the slice's value range) and then picks slices with order `order_z`;
    other scans at once (clipped to the volume's range). Here the axes across the split axis (the
    low-resolution one, else z) are resampled on slabs along it, then the split axis on slabs
    along another: each line is resampled on its own, so slabs give the same numbers and keep
    `workers` threads busy (scipy and numpy release the GIL; default: every core)."""
    separate_z = lowres_axis is not None
    split = lowres_axis if separate_z else 0
    across = [axis for axis in range(3) if axis != split]
    workers = workers or len(os.sched_getaffinity(0))

    def in_plane(slab: np.ndarray) -> np.ndarray:
        values = slab.astype(np.float64)
        for axis in sorted(across, key=lambda a: new_shape[a] / slab.shape[a]):  # shrink first: less work
            values = _resample_axis(values, axis, new_shape[axis], order)
        if separate_z:
            np.clip(values, *(f(slab, axis=tuple(across), keepdims=True) for f in (np.min, np.max)), out=values)
        return values

    def along(slab: np.ndarray) -> np.ndarray:
        return _resample_axis(slab, split, new_shape[split], order_z if separate_z else order)

    def slabs(volume: np.ndarray, axis: int) -> list[np.ndarray]:
        return np.array_split(volume, min(workers, volume.shape[axis]), axis=axis)

    resampled = np.empty((len(data), *new_shape), np.float32)
    with ThreadPoolExecutor(workers, thread_name_prefix="resample") as pool:
        planes = [[pool.submit(in_plane, slab) for slab in slabs(channel, split)] for channel in data]
        planes = [np.concatenate([p.result() for p in channel], axis=split) for channel in planes]
        volumes = [[pool.submit(along, slab) for slab in slabs(channel, across[0])] for channel in planes]
        for c, channel in enumerate(volumes):
            volume = np.concatenate([v.result() for v in channel], axis=across[0])
            if not separate_z:
                np.clip(volume, data[c].min(), data[c].max(), out=volume)
            resampled[c] = volume
    return resampled


def _resample_axis(values: np.ndarray, axis: int, length: int, order: int) -> np.ndarray:
    """A B-spline of `order` (0, 1 or 3) along one axis, sampled at `length` points on the same
    extent (zoom's grid_mode: voxel centres at (k + 0.5) * old/new - 0.5); beyond the edge the
    edge value continues (skimage "edge", scipy "nearest"). The taps and weights form a sparse
    (length x size) matrix, applied to all lines along the axis at once."""
    size = values.shape[axis]
    if size == length:
        return values
    centres = (np.arange(length) + 0.5) * (size / length) - 0.5
    # Taps and weights as scipy computes them (ni_splines.c: the last weight is 1 minus the others).
    if order == 0:  # map_coordinates: the nearest voxel, halves rounding up
        taps, weights = [np.clip(np.floor(centres + 0.5), 0, size - 1)], []
    elif order == 1:
        centres = np.clip(centres, 0, size - 1)
        first = np.minimum(np.floor(centres), max(size - 2, 0))
        taps, weights = [first, np.minimum(first + 1, size - 1)], [1.0 - (centres - first)]
    elif order == 3:
        padding = [(0, 0)] * values.ndim
        padding[axis] = (_SPLINE_PREPAD, _SPLINE_PREPAD)
        values = ndimage.spline_filter1d(np.pad(values, padding, mode="edge"), 3, axis=axis,
                                         output=np.float64, mode="nearest")
        centres = centres + _SPLINE_PREPAD
        first = np.floor(centres)
        fraction = centres - first
        remaining = 1.0 - fraction
        taps = [first - 1 + h for h in range(4)]
        weights = [remaining * remaining * remaining / 6.0,
                   (fraction * fraction * (fraction - 2.0) * 3.0 + 4.0) / 6.0,
                   (remaining * remaining * (remaining - 2.0) * 3.0 + 4.0) / 6.0]
    else:
        raise ValueError(f"spline order {order} is not supported (nnU-Net's plans use 0, 1 and 3)")
    weights.append(reduce(np.subtract, weights, np.ones(length)))
    matrix = sparse.csr_array((np.stack(weights, 1).ravel(), np.stack(taps, 1).astype(np.intp).ravel(),
                               np.arange(0, length * len(taps) + 1, len(taps))), shape=(length, values.shape[axis]))
    lines = np.moveaxis(values, axis, 0)
    resampled = matrix @ lines.reshape(len(lines), -1)
    return np.moveaxis(resampled.reshape(length, *lines.shape[1:]), 0, axis)
