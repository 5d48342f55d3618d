"""Brain masks (brain.py): skull-stripped scans found as such, masks given by the user, deepbet on
real anatomy (Colin27) and on raw phantoms end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import brain_volume, make_image, predict, write_case

from mixmicrobleednet import layout
from mixmicrobleednet.brain import (BrainMasking, BrainSettings, extract_brain, fill_holes, find_brain_mask,
                                    interior_count, is_skull_stripped, onto_grid)
from mixmicrobleednet.cases import CaseError, seed_cases
from mixmicrobleednet.cli import build_parser
from mixmicrobleednet.runner import options_from
from mixmicrobleednet.imaging import load_case


def _head(shape=(100, 120, 120), spacing=(2.0, 2.0, 2.0), noise=0.0, seed=0) -> sitk.Image:
    """An ellipsoid 'head' of 3,700 ml (semi-axes 90, 110, 90 mm), background 0 (or noise)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    c = np.array(shape) / 2
    inside = ((zz - c[0]) / 45) ** 2 + ((yy - c[1]) / 55) ** 2 + ((xx - c[2]) / 45) ** 2 < 1
    array = (100.0 * inside + noise * np.abs(rng.standard_normal(shape))).astype(np.float32)
    return make_image(array, spacing)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_holes_is_scipys(seed):
    """Enclosed holes filled, background open to any face (or only touching it) kept, pinholes too."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    mask = np.zeros((30, 40, 35), bool)
    mask[2:28, 3:37, 0:33] = True              # touches the x = 0 face
    mask[8:14, 10:20, 10:20] = False           # enclosed: a hole
    mask[15:20, 25:30, 0:6] = False            # open to the x = 0 face: outside
    mask[20:24, 5:9, 5:9] = False
    mask[21:23, 6:8, 5:30] = False             # a tunnel to the hole above
    mask &= rng.random(mask.shape) > 0.05      # pinholes everywhere
    expected = ndimage.binary_fill_holes(mask)
    assert 0 < np.sum(expected & ~mask) and np.sum(~expected) > 0  # both holes and outside
    np.testing.assert_array_equal(fill_holes(mask), expected)
    assert not fill_holes(np.zeros((3, 4, 5), bool)).any()


def _tight_brain(shape=(28, 60, 52), seed=0) -> np.ndarray:
    """A 'brain' whose field of view hugs it, as a crop to the brain's box or a slab through it: an
    ellipsoid wider than the grid in z, y and x, background only in the corners (9 % of the grid)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    inside = ((zz - c[0]) / (0.9 * shape[0])) ** 2 + ((yy - c[1]) / (0.6 * shape[1])) ** 2 \
        + ((xx - c[2]) / (0.6 * shape[2])) ** 2 < 1
    return ((100 + 10 * rng.standard_normal(shape)) * inside).astype(np.float32)


def _defaced(head: sitk.Image) -> sitk.Image:
    array = sitk.GetArrayFromImage(head)
    array[: array.shape[0] // 2, int(0.7 * array.shape[1]):] = 0  # the face: front half below the middle
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(head)
    return result


def _corpus() -> dict[str, tuple[sitk.Image, bool]]:
    """Input shapes (name → scan, skull-stripped?): crops, backgrounds, types, padding, defacing."""
    loose, tight = brain_volume((20, 40, 36)), _tight_brain()
    big = (2.5, 2.5, 2.5)  # voxels large enough for a brain's ml (1,240) on a small grid
    noise = 3 * np.abs(np.random.default_rng(1).standard_normal((28, 60, 52))).astype(np.float32)
    slab = sitk.GetArrayFromImage(_head(noise=5))[40:62]  # 44 mm of a raw head, 2,530 ml with its air
    return {
        "loose crop, zero background": (make_image(loose), True),
        "tight crop, zero background (9 % of the grid)": (make_image(tight, big), True),
        "tight crop, background -1": (make_image(np.where(tight > 0, tight, -1)), True),
        "z-scored, background 0 in the middle of the brain's values": (make_image(np.where(tight > 0, tight - 100, 0)), True),
        "integer type": (make_image(tight.astype(np.int16), big), True),
        "unsigned 8 bit": (make_image(np.clip(tight, 0, 255).astype(np.uint8), big), True),
        "stripped and padded with zeros": (make_image(np.pad(tight, 10), big), True),
        "noise background": (make_image(tight + 3 + noise), False),
        "raw slab padded with zeros": (make_image(np.pad(slab, 6), (2.0, 2.0, 2.0)), False),
        "head, zeroed background": (_head(), False),
        "head, noise, defaced": (_defaced(_head(noise=5)), False),
        "head, noise, padded": (make_image(np.pad(sitk.GetArrayFromImage(_head(noise=5)), 8), (2.0, 2.0, 2.0)), False),
    }


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 1), (7, 9, 11), (30, 40, 50)])
def test_interior_count_is_scipys_erosion_with_the_border_set(shape):
    from scipy import ndimage

    rng = np.random.default_rng(sum(shape))
    for share in (0.0, 0.5, 0.9, 1.0):
        voxels = rng.random(shape) < share
        assert interior_count(voxels) == int(ndimage.binary_erosion(voxels, border_value=1).sum())


def test_skull_stripped_scans_are_told_from_raw_ones_whatever_the_background_share():
    wrong = {name: why for name, (scan, stripped) in _corpus().items()
             if (found := is_skull_stripped(scan))[0] != stripped for why in [found[1]]}
    assert not wrong, wrong


def test_an_implausible_extraction_on_a_scan_with_a_constant_background_keeps_the_scans_own_brain(monkeypatch, caplog):
    """The previous release segmented such a case as read: never lose it to deepbet (which fails on
    scans already stripped), and say so; a scan without a constant background keeps the error."""
    from mixmicrobleednet import brain

    tight = _tight_brain()
    t2s = make_image(tight, (4.0, 4.0, 4.0))
    monkeypatch.setattr(brain, "extract_brain", lambda image, use_gpu=False: _tiny_mask(image))
    found = find_brain_mask("c", t2s, BrainSettings(masking=BrainMasking.EXTRACT))
    assert np.array_equal(found.mask, tight > 0) and not found.extracted
    assert found.source.startswith("the T2S scan's own non-background") and "deepbet on the T2S gave" in found.source
    assert "own non-background" in caplog.text
    noisy = make_image(tight + 3 + np.random.default_rng(2).random(tight.shape, np.float32), (4.0, 4.0, 4.0))
    with pytest.raises(CaseError, match=r"brain mask \(deepbet on the T2S\) is \d+ ml on the T2S grid, less than 300 ml"):
        find_brain_mask("c", noisy, BrainSettings(masking=BrainMasking.EXTRACT))


def test_a_failed_extraction_is_the_case_error_naming_its_scan(tmp_path, random_model, monkeypatch):
    """Without a constant background to fall back on, a too-small extraction fails the case, the
    message names the T2* file, and the other case of the run finishes."""
    from mixmicrobleednet import brain

    monkeypatch.setattr(brain, "extract_brain", lambda image, use_gpu=False: _tiny_mask(image))
    write_case(tmp_path / "in", "ok1", shape=(28, 60, 52), spacing_xyz=(2.5, 2.5, 2.5))
    noisy = _tight_brain() + 3 + np.random.default_rng(4).random((28, 60, 52), np.float32)
    path = tmp_path / "in" / layout.input_name(layout.case_stem("raw1"), layout.REFERENCE_CHANNEL)
    sitk.WriteImage(make_image(noisy, (2.5, 2.5, 2.5)), str(path))
    for channel in (c for c in layout.CHANNELS if c != layout.REFERENCE_CHANNEL):
        sitk.WriteImage(make_image(noisy, (2.5, 2.5, 2.5)),
                        str(tmp_path / "in" / layout.input_name(layout.case_stem("raw1"), channel)))
    results = {r.case_id: r for r in predict(tmp_path / "in", tmp_path / "out", random_model)}
    assert results[layout.case_stem("ok1")].error_messages == []
    [message] = results[layout.case_stem("raw1")].error_messages
    assert message.startswith(f"{path.name}: brain mask (deepbet on the T1") and "not a brain" in message


def _tiny_mask(image: sitk.Image) -> sitk.Image:
    """What deepbet gives on some scans that are already stripped: a few ml."""
    mask = np.zeros(image.GetSize()[::-1], np.uint8)
    mask[10:14, 25:35, 20:30] = 1
    result = sitk.GetImageFromArray(mask)
    result.CopyInformation(image)
    return result


@pytest.mark.parametrize("channels", [layout.CHANNELS, (layout.REFERENCE_CHANNEL,)], ids=["T1-T2-T2S", "T2S"])
def test_a_tight_field_of_view_skull_stripped_case_segments_as_with_skull_stripped(tmp_path, channels):
    """The issue's cases: skull-stripped, the field of view hugging the brain (256 x 224 x 56 at
    0.48 x 0.48 x 0.78 mm, a few percent background): taken as read, as with --skull-stripped, with
    three channels and with the T2* alone; the record says why."""
    from mixmicrobleednet.train import write_random_model

    model = write_random_model(tmp_path / "model", channels=channels)
    spacing = (0.48, 0.48, 0.78)
    for index, channel in enumerate(channels):
        path = tmp_path / "in" / layout.input_name(layout.case_stem("h00"), channel)
        path.parent.mkdir(exist_ok=True)
        sitk.WriteImage(make_image(_tight_brain((56, 224, 256), seed=index), spacing), str(path))
    masks = {}
    for flags in ({}, {"brain": BrainSettings(masking=BrainMasking.SKULL_STRIPPED)}):
        out = tmp_path / f"out{len(flags)}"
        results = predict(tmp_path / "in", out, model, **flags)
        assert not results[0].error_messages, results[0].error_messages
        record = json.loads(next((out / "records").glob("*.json")).read_text())
        masks[len(flags)] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / record["outputs"]["mask"])))
    assert record["brain_mask"]["source"] == "skull-stripped (--skull-stripped)"
    auto = json.loads(next((tmp_path / "out0" / "records").glob("*.json")).read_text())
    assert auto["brain_mask"]["source"].startswith("skull-stripped as read") and not auto["brain_mask"]["extracted"]
    assert np.array_equal(masks[0], masks[1])


def test_skull_stripped_and_auto_leave_the_scans_as_they_are():
    t2s = make_image(brain_volume((20, 40, 36)))
    for masking in (BrainMasking.AUTO, BrainMasking.SKULL_STRIPPED):
        found = find_brain_mask("c", t2s, BrainSettings(masking=masking))
        assert found.mask is None and found.volume_ml > 0
    assert "--skull-stripped" in find_brain_mask("c", _head(noise=5), BrainSettings(masking=BrainMasking.SKULL_STRIPPED)).source


def test_a_given_mask_masks_every_channel(tmp_path):
    write_case(tmp_path / "in", "g1", shape=(20, 40, 36), spacing_xyz=(8.0, 8.0, 12.0))  # large voxels: a brain's ml
    case = seed_cases(tmp_path / "in")[0]
    mask = np.zeros((20, 40, 36), np.uint8)
    mask[5:15, 10:30, 8:28] = 1
    given = make_image(mask, spacing_xyz=(8.0, 8.0, 12.0))
    (tmp_path / "masks").mkdir()
    sitk.WriteImage(given, str(tmp_path / "masks" / layout.brain_mask_name(case.case_id)))
    stack = load_case(case, brain=BrainSettings(masking=BrainMasking.GIVEN, given=tmp_path / "masks"))
    assert stack.brain.source == f"given ({layout.brain_mask_name(case.case_id)})"
    assert not stack.array[:, mask == 0].any() and stack.array[:, mask == 1].any()


def test_a_missing_or_tiny_given_mask_is_the_case_error(tmp_path):
    t2s = make_image(brain_volume((20, 40, 36)))
    with pytest.raises(CaseError, match=r"no brain mask sub-x_space-T2S_brainmask\.nii\.gz"):
        find_brain_mask("sub-x_space-T2S", t2s, BrainSettings(masking=BrainMasking.GIVEN, given=tmp_path))
    tiny = tmp_path / "tiny.nii.gz"
    sitk.WriteImage(make_image((brain_volume((20, 40, 36)) > 0).astype(np.uint8)), str(tiny))
    with pytest.raises(CaseError, match=r"brain mask \(given \(tiny\.nii\.gz\)\) is 8 ml on the T2S grid, less than 300 ml: not a brain"):
        find_brain_mask("sub-x_space-T2S", t2s, BrainSettings(masking=BrainMasking.GIVEN, given=tiny))


def test_the_command_line_chooses_one_way_to_mask(tmp_path):
    parser = build_parser()
    common = ["predict", "-i", "in", "-o", "out"]
    choices = {(): BrainMasking.AUTO, ("--skull-stripped",): BrainMasking.SKULL_STRIPPED,
               ("--extract-brain",): BrainMasking.EXTRACT, ("--brain-mask", "m"): BrainMasking.GIVEN}
    for flags, masking in choices.items():
        args = parser.parse_args(common + list(flags))
        assert options_from(args, "predict").brain.masking is masking
    assert not options_from(parser.parse_args(common + ["--device", "cpu"]), "predict").brain.gpu_allowed
    with pytest.raises(SystemExit):
        parser.parse_args(common + ["--skull-stripped", "--brain-mask", "m"])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.sum(a & b)) / float(a.sum() + b.sum())


def test_deepbet_finds_the_colin27_brain(colin27_brain):
    """deepbet on the Colin27 T1 head: Dice >= 0.93 against ch2bet (BET's tighter mask); and its
    mask moved onto a T2*-like grid by the registration lies on the moved brain."""
    from mixmicrobleednet.phantoms import random_rigid, t2s_like_copy
    from mixmicrobleednet.registration import register_rigid

    head, brain = colin27_brain
    found = extract_brain(head)
    truth = sitk.GetArrayFromImage(brain) > 0
    assert _dice(sitk.GetArrayFromImage(found) > 0, truth) >= 0.93
    rng = np.random.default_rng(5)
    centre = brain.TransformContinuousIndexToPhysicalPoint([s / 2 for s in brain.GetSize()])
    movement = random_rigid(rng, centre)
    t2s = t2s_like_copy(head, movement, rng)
    registration = register_rigid(head, t2s, "T1")
    on_t2s = onto_grid(found, t2s, registration.transform)
    moved_truth = sitk.GetArrayFromImage(sitk.Resample(brain, t2s, movement, sitk.sitkNearestNeighbor, 0)) > 0
    assert _dice(on_t2s, moved_truth) >= 0.9


@pytest.fixture(scope="module")
def colin27_brain(colin27):
    from mixmicrobleednet.phantoms import COLIN27_DIR

    return colin27[0], sitk.ReadImage(str(COLIN27_DIR / "ch2bet.nii.gz"))


def test_a_raw_phantom_is_registered_and_brain_extracted_end_to_end(tmp_path, random_model, colin27):
    """A raw twin (head around the brain, noise around the head, T1/T2 on 1 mm grids of their own and
    moved): registered, brain-extracted on the T1 (Dice >= 0.9 against the phantom's brain), every
    channel masked, the mask, its QC picture and its record written."""
    from mixmicrobleednet.phantoms import generate

    generate(tmp_path / "raw", 1, seed=3, cohorts=["lowres"], raw=True)
    case = seed_cases(tmp_path / "raw")[0]
    assert not is_skull_stripped(sitk.ReadImage(str(case.channel_paths["T2S"])))[0]
    results = predict(tmp_path / "raw", tmp_path / "out", random_model)
    assert not results[0].error_messages, results[0].error_messages
    record = json.loads((tmp_path / "out" / case.output_paths["record"]).read_text())
    assert record["brain_mask"]["source"].startswith("deepbet on the T1")
    assert set(record["registrations"]) == {"T1", "T2"} and {"brain mask", "registration T1"} <= set(record["stage_seconds"])
    found = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / record["outputs"]["brain_mask"]))) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "raw" / layout.brain_mask_name(case.case_id)))) > 0
    assert _dice(found, truth) >= 0.9
    assert (tmp_path / "out" / record["outputs"]["preprocessing_qc"]).read_bytes()[:4] == b"\x89PNG"
    assert record["settings"]["brain_mask"] == "auto"
    assert record["brain_mask"]["extracted"] and record["edge_rule"]["edge_margin_mm"] == 4.0  # the default there
