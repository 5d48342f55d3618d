"""The mimic check: a mark's T2* features, the model's check in its plans.json, marks set aside."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.lesions import extract_lesions
from mixmicrobleednet.mimics import MarkJudge, mark_features
from mixmicrobleednet.modelfolder import MIMIC_CHECK, MIMIC_FEATURES, MimicCheck, ModelError, read_model_folder
from mixmicrobleednet.pipeline import CaseRun, FunctionPredictor, run_cases
from mixmicrobleednet.train import write_mimic_check

from conftest import cases_for, make_image

#: The three-channel phantom model's check as benchmarks/mark_features.py fitted it on validation draws.
CHECK = MimicCheck({"log_extent_ratio": -1.650, "blobness": 1.190, "log_elongation": -0.919, "log_radius_mm": -0.149},
                   2.312, 0.5)
SPACING = np.array([1.0, 0.5, 0.5])  # z, y, x mm


def ball_and_vein(shape=(40, 80, 80)):
    """A T2* scan (z, y, x) with a dark ball (4 mm across) and a dark tube (a vein, 2 mm across, along
    x) in a bright brain; the ball's voxels and a 4 mm piece of the tube's, as a network marks them."""
    z, y, x = np.indices(shape) * SPACING[:, None, None, None]
    ball = np.sqrt((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) < 2.0
    tube = (np.sqrt((y - 20) ** 2 + (z - 20) ** 2) < 1.0) & (x > 25)  # away from the ball
    t2s = np.where(ball | tube, 100.0, 500.0).astype(np.float32)
    return t2s, ball, tube & (x < 29)


def test_mark_features_tell_a_vein_from_a_microbleed():
    """A dark ball's dark region ends with it and its Hessian is a ball's; a dark tube's runs on along
    the tube and its Hessian is a tube's. The features are the ones a check may weigh."""
    t2s, ball, vein = ball_and_vein()
    brain = np.ones(t2s.shape, bool)
    on_ball = mark_features(t2s, brain, np.argwhere(ball), SPACING)
    on_vein = mark_features(t2s, brain, np.argwhere(vein), SPACING)
    assert set(MIMIC_FEATURES) <= set(on_ball)
    assert on_ball["extent_mm"] < 5.0 < 10.0 < on_vein["extent_mm"]  # the ball: 4 mm across
    assert on_ball["blobness"] > 0.5 > 0.2 > on_vein["blobness"]
    assert CHECK.probability(on_ball) > 0.9 and CHECK.probability(on_vein) < 0.3


def test_a_checks_probability_is_the_logistic_function_even_far_out():
    features = {name: 0.0 for name in MIMIC_FEATURES}
    assert CHECK.probability(features) == pytest.approx(1 / (1 + np.exp(-2.312)))
    assert CHECK.probability(features | {"blobness": -1e6}) == 0.0  # no overflow
    assert CHECK.probability(features | {"blobness": 1e6}) == 1.0


def test_extract_lesions_sets_aside_what_the_check_calls_a_mimic():
    t2s, ball, vein = ball_and_vein()
    probabilities = (ball | vein).astype(np.float32)
    image = make_image(t2s, spacing_xyz=tuple(SPACING[::-1]))
    judge = MarkJudge.on_scan(CHECK, image, np.ones(t2s.shape, bool))
    lesions = extract_lesions(probabilities, image, judge=judge)
    assert lesions.count == 1 and len(lesions.mimics) == 1
    assert lesions.table.loc[0, "calibrated_probability"] > 0.9 > 0.3 > lesions.mimics.loc[0, "calibrated_probability"]
    assert lesions.mask.sum() == ball.sum() and not lesions.mask[vein].any()
    unjudged = extract_lesions(probabilities, image)
    assert unjudged.count == 2 and unjudged.table["calibrated_probability"].isna().all()


def test_a_model_folders_check_is_read_and_checked(tmp_path, random_model):
    model = tmp_path / "model"
    shutil.copytree(random_model, model)
    assert read_model_folder(model).mimic_check is None
    before = read_model_folder(model).checksum
    write_mimic_check(model, CHECK)
    assert read_model_folder(model).mimic_check == CHECK and read_model_folder(model).checksum != before
    plans = json.loads((model / layout.PLANS_JSON).read_text())
    for wrong in ({"coefficients": {"darkness": 1.0}, "intercept": 0, "cut": 0.5},
                  {"coefficients": {"blobness": 1.0}, "intercept": 0, "cut": 1.5}, {"cut": 0.5}):
        (model / layout.PLANS_JSON).write_text(json.dumps(plans | {MIMIC_CHECK: wrong}))
        with pytest.raises(ModelError, match="unreadable plans.json"):
            read_model_folder(model)


def test_a_run_sets_aside_mimics_with_the_models_check_and_says_so(tmp_path, random_model):
    """The same case and network output through a model without a check (both marks kept) and with
    one (the vein set aside): the lesion table's calibrated probability, the record and summary.csv."""
    t2s, ball, vein = ball_and_vein()
    brain = np.zeros(t2s.shape, bool)
    brain[2:-2, 2:-2, 2:-2] = True  # a skull-stripped scan: its own brain is found from it
    (tmp_path / "input").mkdir()
    for channel in layout.CHANNELS:
        sitk.WriteImage(make_image(np.where(brain, t2s, 0).astype(np.float32), spacing_xyz=tuple(SPACING[::-1])),
                        str(tmp_path / "input" / layout.input_name(stem("m1"), channel)))
    checked = tmp_path / "checked-model"
    shutil.copytree(random_model, checked)
    write_mimic_check(checked, CHECK)

    def network(stack, model):
        return (ball | vein).astype(np.float32)

    for model, count, mimics in ((random_model, 2, None), (checked, 1, 1)):
        out = tmp_path / model.name
        [result] = run_cases(cases_for(tmp_path / "input", model), CaseRun(FunctionPredictor(network), out))
        assert not result.error_messages and result.microbleed_count == count
        record = json.loads((out / layout.RECORDS_DIR / layout.record_name(stem("m1"))).read_text())
        table = pd.read_csv(out / result.outputs["lesions"])
        summary = pd.read_csv(out / layout.SUMMARY_CSV)
        if mimics is None:
            assert record["mimic_check"] == {"cut": None, "mimics": []} and table["calibrated_probability"].isna().all()
            assert summary["mimic_count"].isna().all()
        else:
            assert record["mimic_check"]["cut"] == 0.5 and len(record["mimic_check"]["mimics"]) == mimics
            assert record["mimic_check"]["mimics"][0]["calibrated_probability"] < 0.5
            assert (table["calibrated_probability"] > 0.9).all() and summary.loc[0, "mimic_count"] == mimics
