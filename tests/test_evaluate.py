import json

import numpy as np
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.evaluate import case_measures, evaluate_folders


def _blank():
    return np.zeros((10, 20, 20), np.uint8)


def test_detection_counts_dice_and_voxel_rates():
    reference, prediction = _blank(), _blank()
    reference[2:4, 2:4, 2:4] = 1        # detected, half overlapped
    prediction[2:4, 2:4, 3:5] = 1
    reference[6:8, 10:12, 10:12] = 1    # missed
    prediction[5, 17, 17] = 1           # false positive
    m = case_measures(reference, prediction, voxel_volume_mm3=0.5)
    assert (m["n_reference"], m["n_predicted"]) == (2, 2)
    assert (m["true_positives"], m["false_negatives"], m["false_positives"]) == (1, 1, 1)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["dice"] == pytest.approx(2 * 4 / (16 + 9))
    assert m["volume_difference_mm3"] == pytest.approx((16 - 9) * 0.5)
    assert m["voxel_fdr"] == pytest.approx(5 / 9) and m["voxel_fnr"] == pytest.approx(12 / 16)
    assert m["count_difference"] == 0


def test_false_positives_are_counted_by_the_mimic_they_sit_on():
    reference, prediction, mimics = _blank(), _blank(), _blank()
    reference[2:4, 2:4, 2:4] = 1
    prediction[2:4, 2:4, 2:4] = 1       # a hit on a vein is no false positive
    mimics[:, 3, :] = 1                 # a vein along z and x at y = 3
    prediction[6:8, 3:5, 10] = 1        # half on the vein: counted there
    mimics[1:3, 15:18, 15:18] = 2       # pallidal iron
    prediction[1, 16, 16] = 1
    prediction[8, 17, 2] = 1            # on nothing
    m = case_measures(reference, prediction, 1.0, mimics)
    assert m["false_positives"] == 3
    assert (m["false_positives_vein"], m["false_positives_pallidal_iron"], m["false_positives_other"]) == (1, 1, 1)
    assert "false_positives_vein" not in case_measures(reference, prediction, 1.0)


def test_cases_without_microbleeds():
    empty = case_measures(_blank(), _blank(), 1.0)
    assert np.isnan(empty["dice"]) and np.isnan(empty["precision"]) and np.isnan(empty["recall"])
    assert empty["false_positives"] == 0
    prediction = _blank()
    prediction[1, 1, 1] = 1
    fp_only = case_measures(_blank(), prediction, 1.0)
    assert fp_only["dice"] == 0 and fp_only["false_positives"] == 1 and np.isnan(fp_only["recall"])


def test_folders_pool_counts_and_split_by_cohort(tmp_path):
    labels, predictions = tmp_path / "labels", tmp_path / "pred" / layout.IMAGES_DIR
    labels.mkdir()
    predictions.mkdir(parents=True)
    cases = {"a": ("x", 1, 1), "b": ("x", 2, 0), "c": ("y", 0, 1)}  # subject: cohort, reference, detected
    for subject, (_, n_ref, n_hit) in cases.items():
        reference, prediction = _blank(), _blank()
        for i in range(n_ref):
            reference[1 + 4 * i, 5, 5] = 1
            if i < n_hit:
                prediction[1 + 4 * i, 5, 5] = 1
        if n_ref == 0:
            prediction[9, 19, 19] = 1  # one false positive in the case without microbleeds
        sitk.WriteImage(sitk.GetImageFromArray(reference), str(labels / layout.label_name(stem(subject))))
        sitk.WriteImage(sitk.GetImageFromArray(prediction), str(predictions / layout.prediction_name(stem(subject))))
    (tmp_path / "phantoms.csv").write_text("subject,cohort\na,x\nb,x\nc,y\n")
    summary = evaluate_folders(labels, tmp_path / "pred", tmp_path / "eval", tmp_path / "phantoms.csv")
    assert summary.loc["all", "sensitivity"] == pytest.approx(1 / 3)
    assert summary.loc["all", "false_positives_per_scan"] == pytest.approx(1 / 3)
    assert summary.loc["x", "reference_microbleeds"] == 3 and summary.loc["y", "cases_with_microbleeds"] == 0
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["y"]["dice_cases_with_microbleeds"] is None
    assert (tmp_path / "eval" / "per_case.csv").read_text().startswith("case,subject,")


def test_missing_prediction_is_an_error(tmp_path):
    (tmp_path / "l").mkdir()
    (tmp_path / "p").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(_blank()), str(tmp_path / "l" / layout.label_name(stem("a"))))
    with pytest.raises(ValueError, match="no prediction for 1 labelled case"):
        evaluate_folders(tmp_path / "l", tmp_path / "p")


# The VALDO 2021 Task 2 rule, on hand-built cases (spacing z, y, x in mm).
SPACING = (3.0, 1.0, 1.0)


def _valdo(reference, prediction, distance=3.0, unit="voxel"):
    from mixmicrobleednet.evaluate import valdo_case_measures

    return valdo_case_measures(reference, prediction, SPACING, distance, unit)


def test_valdo_two_predictions_near_one_reference_the_nearer_is_the_hit():
    reference, prediction = _blank(), _blank()
    reference[4, 8:11, 8:11] = 1                      # centre (4, 9, 9)
    prediction[4, 9, 9:11] = 1                        # centre (4, 9, 9.5): nearer, TP
    prediction[4, 11, 11] = 1                         # centre (4, 11, 11): 2.8 voxels away, FP
    m = _valdo(reference, prediction)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (1, 1, 0)
    assert m["f1"] == pytest.approx(2 / 3)
    # Dice of the reference with both predictions assigned to it: 2 * 2 / (9 + 3)
    assert m["mean_dice"] == pytest.approx(4 / 12)
    assert m["absolute_count_difference"] == 1
    assert m["absolute_volume_difference_mm3"] == pytest.approx((9 - 3) * 3.0)


def test_valdo_a_prediction_beyond_the_distance_is_a_false_positive_and_a_miss():
    reference, prediction = _blank(), _blank()
    reference[2, 5, 5] = 1
    prediction[2, 5, 9] = 1                           # 4 voxels, 4 mm away
    m = _valdo(reference, prediction, distance=3.0)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (0, 1, 1)
    assert m["f1"] == 0 and m["mean_dice"] == 0
    prediction[:] = 0
    prediction[3, 5, 5] = 1                           # 1 voxel but 3 mm away (thick slices)
    assert _valdo(reference, prediction, 2.0, "voxel")["true_positives"] == 1
    assert _valdo(reference, prediction, 2.0, "mm")["true_positives"] == 0


# Labels of 0.5 (one of two raters) stay in the reference, as the challenge code's one-decimal rounding
# keeps them; a microbleed weighs its largest label value in F1, each voxel its value in Dice and volume.
# Voxel volume 3 mm³; F1 = 2 wTP / (2 wTP + FP + wFN).
ONE_RATER = (6, slice(12, 14), slice(12, 14))        # 4 voxels of 0.5: weight 2
BOTH_RATERS = (2, slice(2, 4), slice(2, 4))          # 4 voxels of 1: weight 4


def _mixed_reference():
    reference = np.zeros((10, 20, 20), np.float32)
    reference[BOTH_RATERS] = 1.0
    reference[ONE_RATER] = 0.5
    return reference


def test_valdo_a_microbleed_marked_by_one_rater_alone_is_found_with_half_weight():
    reference, prediction = np.zeros((10, 20, 20), np.float32), _blank()
    reference[ONE_RATER] = 0.5
    prediction[ONE_RATER] = 1
    m = _valdo(reference, prediction)
    assert (m["n_reference"], m["true_positives"], m["false_positives"], m["false_negatives"]) == (1, 1, 0, 0)
    assert m["absolute_count_difference"] == 0
    assert m["f1"] == pytest.approx(1.0)                                      # 2 x 0.5 / (2 x 0.5)
    assert m["mean_dice"] == pytest.approx(2 / 3)                             # 2 x 4 x 0.5 / (4 + 2)
    assert m["absolute_volume_difference_mm3"] == pytest.approx(6.0)          # |4 - 2| x 3


@pytest.mark.parametrize("found, f1, mean_dice, count_difference", [
    ((BOTH_RATERS, ONE_RATER), 1.0, (1 + 2 / 3) / 2, 0),  # 2 x 1.5 / (2 x 1.5); Dice 2x4/(4+4), 2x2/(4+2)
    ((BOTH_RATERS,), 0.8, 1.0, 1),                         # 2 x 1 / (2 x 1 + 0.5 missed)
    ((ONE_RATER,), 0.5, 2 / 3, 1),                         # 2 x 0.5 / (2 x 0.5 + 1 missed)
])
def test_valdo_mixed_agreement_weighs_hits_and_misses(found, f1, mean_dice, count_difference):
    prediction = _blank()
    for microbleed in found:
        prediction[microbleed] = 1
    m = _valdo(_mixed_reference(), prediction)
    assert (m["n_reference"], m["true_positives"], m["false_negatives"]) == (2, len(found), 2 - len(found))
    assert m["f1"] == pytest.approx(f1)
    assert m["mean_dice"] == pytest.approx(mean_dice)
    assert m["absolute_count_difference"] == count_difference
    assert m["absolute_volume_difference_mm3"] == pytest.approx(abs(4 * len(found) - 6) * 3.0)  # label sums to 6


def test_valdo_a_far_false_positive_counts_one_against_half_weights():
    prediction = _blank()
    prediction[BOTH_RATERS] = 1
    prediction[9, 18, 2] = 1                                                  # far from both microbleeds
    m = _valdo(_mixed_reference(), prediction)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (1, 1, 1)
    assert m["f1"] == pytest.approx(4 / 7)                                    # 2 x 1 / (2 x 1 + 1 + 0.5)
    assert m["mean_dice"] == pytest.approx(1.0)
    assert m["absolute_count_difference"] == 0
    assert m["absolute_volume_difference_mm3"] == pytest.approx(3.0)          # |5 - 6| x 3
    alone, half = np.zeros((10, 20, 20), np.float32), _blank()
    alone[ONE_RATER] = 0.5
    half[ONE_RATER] = 1
    half[9, 18, 2] = 1
    m = _valdo(alone, half)
    assert m["f1"] == pytest.approx(0.5)                                      # 2 x 0.5 / (2 x 0.5 + 1)
    assert m["absolute_volume_difference_mm3"] == pytest.approx(9.0)          # |5 - 2| x 3


@pytest.mark.parametrize("false_positives, f1", [
    # Numbered along x first (NIfTI order): FP (x 2) 1, hit (x 12) 2, FP (x 18) 3. The two false positives
    # share "no microbleed", so the code's table runs hit, FP, FP and files 0.5, 1, 1 on rows 1, 2, 3:
    # the hit (row 2) weighs 1. 2 x 1 / (2 x 1 + 2)
    (((9, 18, 2), (1, 18, 18)), 0.5),
    # Hit 1, FP 2, FP 3: the table keeps its order and the hit its 0.5. 2 x 0.5 / (2 x 0.5 + 2)
    (((9, 18, 17), (1, 18, 18)), 1 / 3),
])
def test_valdo_f1_weights_land_where_the_challenge_code_files_them(false_positives, f1):
    reference, prediction = np.zeros((10, 20, 20), np.float32), _blank()
    reference[ONE_RATER] = 0.5
    prediction[ONE_RATER] = 1
    for voxel in false_positives:
        prediction[voxel] = 1
    m = _valdo(reference, prediction)
    assert (m["true_positives"], m["false_positives"]) == (1, 2)
    assert m["f1"] == pytest.approx(f1)


def test_valdo_a_microbleed_with_a_one_rater_rim_weighs_its_largest_label():
    reference, prediction = np.zeros((10, 20, 20), np.float32), _blank()
    reference[2, 2:4, 2:4] = 1.0                                              # both raters
    reference[2, 4, 2:4] = 0.5                                                # one rater's wider outline
    prediction[2, 2:4, 2:4] = 1                                               # centre 0.5 voxel from (2, 3, 2.5)
    prediction[9, 18, 18] = 1                                                 # false positive
    m = _valdo(reference, prediction)
    assert (m["n_reference"], m["true_positives"], m["false_positives"]) == (1, 1, 1)
    assert m["f1"] == pytest.approx(2 / 3)                                    # 2 x 1 / (2 x 1 + 1)
    assert m["mean_dice"] == pytest.approx(8 / 9)                             # 2 x 4 / (4 + 4 + 2 x 0.5)
    assert m["absolute_volume_difference_mm3"] == 0.0                         # |5 - 5| x 3


def test_valdo_an_exact_tie_makes_both_predictions_hits_and_no_miss():
    reference, prediction = _blank(), _blank()
    reference[4, 9, 9] = 1
    prediction[4, 9, 7] = prediction[4, 9, 11] = 1                            # both 2 voxels away
    m = _valdo(reference, prediction)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (2, 0, 0)
    assert m["f1"] == pytest.approx(1.0)                                      # 2 x 2 / (2 x 2 + 0 + 0)
    assert m["mean_dice"] == 0.0                                              # neither overlaps it


def test_valdo_empty_reference_and_empty_prediction():
    prediction = _blank()
    prediction[1, 1, 1] = 1
    m = _valdo(_blank(), prediction)
    assert np.isnan(m["f1"]) and np.isnan(m["mean_dice"])
    assert (m["false_positives"], m["absolute_count_difference"]) == (1, 1)
    reference = _blank()
    reference[5, 5, 5] = 1
    m = _valdo(reference, _blank())
    assert m["f1"] == 0 and m["mean_dice"] == 0 and m["false_negatives"] == 1
    both = _valdo(_blank(), _blank())
    assert np.isnan(both["f1"]) and both["absolute_count_difference"] == 0


def test_valdo_probabilities_are_thresholded_and_their_volume_counts_probabilities():
    reference, probability = _blank(), np.zeros((10, 20, 20), np.float32)
    reference[2, 2:4, 2:4] = 1
    probability[2, 2:4, 2:4] = 0.75
    probability[2, 4, 2:4] = 0.4                      # below 0.5: not a microbleed voxel
    m = _valdo(reference, probability)
    assert m["true_positives"] == 1 and m["mean_dice"] == 1.0
    assert m["absolute_volume_difference_mm3"] == pytest.approx((4 - 4 * 0.75) * 3.0)
    binary = _valdo(reference, (probability >= 0.5).astype(np.uint8))
    assert binary["absolute_volume_difference_mm3"] == 0.0
    with pytest.raises(ValueError, match="expected 0..1"):
        _valdo(reference, probability * 3)


def test_valdo_folder_summary_is_median_and_interquartile_range(tmp_path):
    labels, predictions = tmp_path / "labels", tmp_path / "pred" / layout.IMAGES_DIR
    labels.mkdir()
    predictions.mkdir(parents=True)
    for index, hits in enumerate((0, 1, 2, 2)):  # 2 reference microbleeds per case
        reference, prediction = _blank(), _blank()
        reference[2, 2, 2] = reference[7, 15, 15] = 1
        for z, y, x in ((2, 2, 2), (7, 15, 15))[:hits]:
            prediction[z, y, x] = 1
        for name, folder, array in ((layout.label_name(stem(f"v{index}")), labels, reference),
                                    (layout.prediction_name(stem(f"v{index}")), predictions, prediction)):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / name))
    summary = evaluate_folders(labels, tmp_path / "pred", tmp_path / "eval", matching="valdo", distance=2.0)
    f1 = [0, 2 / 3, 1, 1]
    assert summary.loc["all", "f1_median"] == pytest.approx(np.median(f1))
    assert summary.loc["all", "f1_q1"] == pytest.approx(np.quantile(f1, 0.25))
    assert summary.loc["all", "absolute_count_difference_q3"] == pytest.approx(np.quantile([2, 1, 0, 0], 0.75))
    per_case = (tmp_path / "eval" / "per_case.csv").read_text().splitlines()
    assert per_case[0].startswith("case,subject,matching,") and "valdo (centres closer than 2 voxels)" in per_case[1]
    with pytest.raises(ValueError, match="needs a matching distance"):
        evaluate_folders(labels, tmp_path / "pred", matching="valdo")
