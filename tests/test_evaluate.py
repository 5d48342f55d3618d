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
