import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.imaging import same_grid
from mixmicrobleednet.phantoms import (COHORTS, SMALL_DIAMETER_MM, SUPERFICIAL_DEPTH_MM, Microbleed, _add_tube,
                                      _choose_microbleeds, _render_bleeds, _Template, make_case)


@pytest.fixture(scope="module")
def template():
    return _Template()


@pytest.fixture(scope="module")
def lowres_case(template):
    rng = np.random.default_rng(11)
    return make_case("t1", COHORTS["lowres"], 6, rng, template)


def test_channels_share_the_t2s_grid_up_to_rounding(lowres_case):
    channels, label, _, _, _ = lowres_case
    t2s = channels["T2S"]
    assert np.allclose(t2s.GetSpacing()[::-1], COHORTS["lowres"].spacing_zyx, rtol=0.05)
    for channel in ("T1", "T2"):
        assert same_grid(channels[channel], t2s)
        assert channels[channel].GetOrigin() != t2s.GetOrigin()  # differs, but only by rounding
    assert label.GetSize() == t2s.GetSize() and label.GetOrigin() == t2s.GetOrigin()


def test_brain_masked_with_tissue_contrast(lowres_case):
    channels, _, _, _, _ = lowres_case
    arrays = {c: sitk.GetArrayFromImage(i).astype(float) for c, i in channels.items()}
    brain = arrays["T1"] > 0
    assert 0.2 < brain.mean() < 0.8 and not arrays["T2S"][~brain].any()
    # T1: white matter brighter than CSF; T2: the reverse (CSF bright)
    bright_t1 = arrays["T1"] > np.percentile(arrays["T1"][brain], 90)
    assert arrays["T2"][bright_t1].mean() < np.percentile(arrays["T2"][brain], 50)


def test_microbleeds_bloom_and_are_labelled(lowres_case):
    channels, label, bleeds, _, _ = lowres_case
    labels, n = ndimage.label(sitk.GetArrayFromImage(label), np.ones((3, 3, 3)))
    assert len(bleeds) == 6 and n == 6
    t2s = sitk.GetArrayFromImage(channels["T2S"]).astype(float)
    t1 = sitk.GetArrayFromImage(channels["T1"]).astype(float)
    for bleed in bleeds:
        index = channels["T2S"].TransformPhysicalPointToIndex(bleed.centre_lps)[::-1]
        assert labels[index] > 0
        ring = ndimage.binary_dilation(labels == labels[index], iterations=3) & (labels == 0) & (t2s > 0)
        lesion = labels == labels[index]
        # darker on T2* than around it, and relatively more than on T1 (faint there)
        contrast_t2s = t2s[lesion].mean() / t2s[ring].mean()
        contrast_t1 = t1[lesion].mean() / t1[ring].mean()
        assert contrast_t2s < 0.85 and contrast_t2s < contrast_t1


def test_the_mimic_map_marks_the_veins_and_no_microbleed(lowres_case):
    channels, label, _, _, mimics = lowres_case
    mimic_array, t2s = sitk.GetArrayFromImage(mimics), sitk.GetArrayFromImage(channels["T2S"]).astype(float)
    assert mimics.GetSize() == label.GetSize() and set(np.unique(mimic_array)) <= {0, *layout.MIMIC_LABELS}
    veins = mimic_array == 1
    assert veins.sum() > 50  # 3-8 veins of 20-60 mm
    brain = t2s > 0
    assert t2s[veins].mean() < 0.9 * t2s[brain & (mimic_array == 0)].mean()  # darker on T2*, as drawn
    assert (veins & (sitk.GetArrayFromImage(label) > 0)).sum() < 0.05 * veins.sum()


def test_varied_phantoms_are_masked_as_an_extraction_leaves_them_and_mark_each_mimic(template):
    """--varied (this seed draws a loosely masked case): tissue beyond the brain stays inside the
    mask, as after a brain extraction, yet no label lies there; each mimic kind drawn is in the map."""
    rng = np.random.default_rng(11)
    channels, label, _, brain, mimics = make_case("v", COHORTS["lowres"], 4, rng, template, varied=True)
    t2s = sitk.GetArrayFromImage(channels["T2S"]).astype(float)
    inside, labelled = sitk.GetArrayFromImage(brain) > 0, sitk.GetArrayFromImage(label) > 0
    beyond = (t2s > 0) & ~inside
    assert beyond.sum() * np.prod(channels["T2S"].GetSpacing()) / 1000 > 20  # ml beyond the brain, kept
    assert labelled.any() and not (labelled & ~inside).any()
    mimic_array = sitk.GetArrayFromImage(mimics)
    kinds = {layout.MIMIC_LABELS[v] for v in np.unique(mimic_array) if v}
    assert {"vein", "pallidal_iron", "deep_iron"} <= kinds
    plain = inside & (mimic_array == 0)
    for kind in ("vein", "pallidal_iron"):
        value = next(v for v, name in layout.MIMIC_LABELS.items() if name == kind)
        assert t2s[mimic_array == value].mean() < 0.9 * t2s[plain].mean()


def test_loose_masks_mask_beyond_the_brain_as_an_extraction_does(template):
    """--loose-masks: in the default look, tissue beyond the brain stays inside the mask (a default
    phantom keeps none); the label stays inside the brain."""
    tight = make_case("t", COHORTS["lowres"], 3, np.random.default_rng(5), template)
    loose = make_case("t", COHORTS["lowres"], 3, np.random.default_rng(5), template, loose_mask=True)
    for _, label, _, brain, _ in (tight, loose):
        inside, labelled = sitk.GetArrayFromImage(brain) > 0, sitk.GetArrayFromImage(label) > 0
        assert labelled.any() and not (labelled & ~inside).any()
    t2s = sitk.GetArrayFromImage(loose[0]["T2S"]).astype(float)
    beyond = (t2s > 0) & ~(sitk.GetArrayFromImage(loose[3]) > 0)
    assert beyond.sum() * np.prod(loose[0]["T2S"].GetSpacing()) / 1000 > 20  # ml kept beyond the brain
    tight_t2s = sitk.GetArrayFromImage(tight[0]["T2S"]).astype(float)
    assert not ((tight_t2s > 0) & ~(sitk.GetArrayFromImage(tight[3]) > 0)).any()


def test_superficial_microbleeds_lie_in_the_outermost_lobar_cortex_and_are_labelled(template):
    chosen = _choose_microbleeds(template, np.random.default_rng(3), 40, superficial=True)
    depth = ndimage.distance_transform_edt(template.brain)
    at = {pool: [depth[tuple(np.round(c).astype(int))] for c, _, p in chosen if p == pool] for pool in
          ("superficial", "lobar")}
    assert len(at["superficial"]) >= 5 and at["lobar"]
    lo, hi = SUPERFICIAL_DEPTH_MM
    assert lo - 1 <= min(at["superficial"]) and max(at["superficial"]) <= hi + 1  # the centre's jitter: < 1 mm
    assert min(at["lobar"]) > hi + 1  # the other pools keep away from the surface
    assert all(2 <= d <= 6 for _, d, p in chosen if p == "superficial")
    _, label, bleeds, _, _ = make_case("s", COHORTS["highres3d"], 8, np.random.default_rng(4), template, superficial=True)
    superficial = [b for b in bleeds if b.drawn_from == "superficial"]
    assert superficial and all(b.location == "lobar" for b in superficial)
    labels = sitk.GetArrayFromImage(label)
    for bleed in superficial:  # annotated where it lies, inside the brain mask
        centre = np.round(label.TransformPhysicalPointToContinuousIndex(bleed.centre_lps)).astype(int)[::-1]
        assert labels[tuple(slice(c - 2, c + 3) for c in centre)].any()


def test_small_microbleeds_are_all_under_4_mm_in_every_place(template):
    sizes = {small: _choose_microbleeds(template, np.random.default_rng(5), 30, superficial=True, small=small)
             for small in (False, True)}
    assert max(d for _, d, _ in sizes[False]) > SMALL_DIAMETER_MM  # the default draws reach 10 mm
    assert all(2 <= d <= SMALL_DIAMETER_MM for _, d, _ in sizes[True])
    assert {p for _, _, p in sizes[True]} == {"lobar", "superficial", "deep", "infratentorial"}


def test_a_vessel_that_wanders_out_of_the_template_adds_nothing(template):
    vessels = np.zeros(template.brain.shape, np.float32)
    _add_tube(vessels, template, np.array([[-30.0, -30, -30], [-20, -25, -28]]), 1.0)
    assert not vessels.any()


def test_thick_slices_get_partial_volume():
    grid = sitk.Image([30, 30, 10], sitk.sitkFloat32)
    grid.SetSpacing((0.45, 0.45, 3.5))
    centre = grid.TransformContinuousIndexToPhysicalPoint((15, 15, 5.5))  # between two slices
    fraction = _render_bleeds((10, 30, 30), grid, [Microbleed(centre, 3.0, "lobar")], 1.0)
    assert 0.2 < fraction[5, 15, 15] < 0.6 and fraction[5, 15, 15] == pytest.approx(fraction[6, 15, 15], abs=0.05)
    assert fraction[2].max() == 0


def test_cli_writes_the_seed_layout(tmp_path):
    from mixmicrobleednet.cli import main

    assert main(["phantoms", "--out", str(tmp_path), "--n", "1", "--seed", "5"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    subject = "s5c000"
    assert names == sorted([layout.input_name(stem(subject), c) for c in layout.CHANNELS]
                           + [layout.label_name(stem(subject)), layout.mimic_map_name(stem(subject)),
                              "microbleeds.csv", "phantoms.csv"])
