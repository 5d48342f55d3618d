"""The predict path end to end on small volumes with a random-weight model (plumbing, not accuracy)."""

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout, records
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.cli import main
from mixmicrobleednet.lesions import LesionSettings
from mixmicrobleednet.device import resolve_device
from mixmicrobleednet.modelfolder import ModelError
from mixmicrobleednet.pipeline import CaseRun, FunctionPredictor, run_cases
from mixmicrobleednet.report import OutputSettings

from conftest import cases_for, predict, write_case


@pytest.fixture
def cohort(tmp_path):
    """Three cases on three different grids, like the three VALDO cohorts (scaled down)."""
    folder = tmp_path / "input"
    write_case(folder, "hr1", shape=(24, 40, 36), spacing_xyz=(0.49, 0.49, 0.8), seed=1)
    write_case(folder, "ts2", shape=(8, 44, 40), spacing_xyz=(0.45, 0.45, 3.5), seed=2)
    write_case(folder, "lr3", shape=(9, 24, 20), spacing_xyz=(1.0, 1.0, 3.0), seed=3)
    return folder


def _assert_on_t2s_grid(mask_path, t2s_path):
    mask, t2s = sitk.ReadImage(str(mask_path)), sitk.ReadImage(str(t2s_path))
    assert mask.GetSize() == t2s.GetSize()
    assert mask.GetSpacing() == t2s.GetSpacing()
    assert mask.GetOrigin() == t2s.GetOrigin()
    assert mask.GetDirection() == t2s.GetDirection()
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}


def test_one_mask_per_case_on_its_t2s_grid_and_model_loaded_once(cohort, tmp_path, random_model, monkeypatch, caplog):
    from mixmicrobleednet import nnunet_glue

    loads = []
    original = nnunet_glue.open_predictor
    monkeypatch.setattr(nnunet_glue, "open_predictor", lambda *a, **k: loads.append(1) or original(*a, **k))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        results = predict(cohort, out, random_model)
    assert len(loads) == 1
    assert sum("model loaded once" in r.message for r in caplog.records) == 1
    assert [r.subject for r in results] == ["hr1", "lr3", "ts2"]
    for subject in ("hr1", "lr3", "ts2"):
        _assert_on_t2s_grid(layout.prediction_path(out, stem(subject)), cohort / layout.input_name(stem(subject), "T2S"))
    report = json.loads((out / "results.json").read_text())
    assert report[0] == {
        "outputs": [{"type": "metaio_image", "filename": ["images/sub-hr1_space-T2S_prediction.nii.gz"]}],
        "inputs": [{"type": "metaio_image", "filename": [layout.input_name(stem("hr1"), c) for c in layout.CHANNELS]}],
        "error_messages": [],
    }


def test_each_case_gets_its_own_mask(tmp_path, random_model):
    """The seed reused one temporary file name for every case; here case two must not be case one."""
    folder = tmp_path / "input"
    write_case(folder, "a1", shape=(10, 30, 30), seed=1)
    write_case(folder, "b2", shape=(12, 26, 34), seed=5)
    predict(folder, tmp_path / "out", random_model, output=OutputSettings(lesions=LesionSettings(threshold=0.0)))
    sizes = {s: sitk.ReadImage(str(layout.prediction_path(tmp_path / "out", stem(s)))).GetSize() for s in ("a1", "b2")}
    assert sizes == {"a1": (30, 30, 10), "b2": (34, 26, 12)}


def test_broken_cases_get_errors_and_the_others_finish(cohort, tmp_path, random_model):
    write_case(cohort, "nochan", seed=4)
    (cohort / layout.input_name(stem("nochan"), "T2")).unlink()
    write_case(cohort, "notimg", seed=5)
    (cohort / layout.input_name(stem("notimg"), "T2S")).write_text("garbage")
    write_case(cohort, "nan", seed=6)
    bad = np.ones((4, 5, 6), np.float32)
    bad[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(bad), str(cohort / layout.input_name(stem("nan"), "T1")))
    write_case(cohort, "flat", seed=7)
    sitk.WriteImage(sitk.Image(12, 12, sitk.sitkFloat32) + 3, str(cohort / layout.input_name(stem("flat"), "T2")))
    write_case(cohort, "zero", seed=8)
    sitk.WriteImage(sitk.Image(12, 12, 5, sitk.sitkInt16), str(cohort / layout.input_name(stem("zero"), "T1")))
    out = tmp_path / "out"

    code = main(["predict", "-i", str(cohort), "-o", str(out), "--model", str(random_model), "--device", "cpu", "--fast"])

    assert code == 1
    report = {entry["inputs"][0]["filename"][0].split("_")[0]: entry for entry in json.loads((out / "results.json").read_text())}
    errors = {subject: " ".join(entry["error_messages"]) for subject, entry in report.items()}
    assert errors["sub-hr1"] == errors["sub-ts2"] == errors["sub-lr3"] == ""
    assert "missing T2 channel" in errors["sub-nochan"] and "sub-nochan_space-T2S_desc-masked_T2.nii.gz" in errors["sub-nochan"]
    assert "sub-notimg_space-T2S_desc-masked_T2S.nii.gz: not a readable image" in errors["sub-notimg"]
    assert "sub-nan_space-T2S_desc-masked_T1.nii.gz: 1 NaN or infinite voxels" in errors["sub-nan"]
    assert "sub-flat_space-T2S_desc-masked_T2.nii.gz: 2D image" in errors["sub-flat"]
    assert "every voxel is zero" in errors["sub-zero"]
    written = sorted(p.name for p in (out / "images").glob("*_prediction.nii.gz"))
    assert written == sorted(layout.prediction_name(stem(s)) for s in ("hr1", "lr3", "ts2"))


def test_cli_exit_codes(tmp_path, random_model, cohort):
    args = ["predict", "-i", str(cohort), "-o", str(tmp_path / "o"), "--device", "cpu", "--fast"]
    assert main(args + ["--model", str(random_model)]) == 0
    nowhere = ["predict", "-i", str(cohort), "-o", str(tmp_path / "o2"), "--model", str(tmp_path / "nowhere")]
    assert main(nowhere) == 2
    assert not list((tmp_path / "o2").rglob("*.nii.gz"))  # a model that cannot load: no case written
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "-i", str(empty), "-o", str(tmp_path / "e"), "--model", str(random_model)]) == 1


def test_device_selection(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ModelError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_cpu_threads_follow_the_containers_cpu_quota(tmp_path, monkeypatch):
    import os

    import torch

    from mixmicrobleednet import device

    cores = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"  # cgroup v2: "<quota> <period>" in microseconds, or "max <period>"
    cpu_max.write_text("50000 100000\n")
    assert device.usable_cpus(cpu_max) == 1
    cpu_max.write_text("250000 100000\n")
    assert device.usable_cpus(cpu_max) == min(3, cores)
    cpu_max.write_text("max 100000\n")
    assert device.usable_cpus(cpu_max) == cores
    assert device.usable_cpus(tmp_path / "no-cgroup") == cores
    threads = torch.get_num_threads()
    monkeypatch.setattr(device, "usable_cpus", lambda: 1)
    try:
        assert resolve_device("cpu").type == "cpu"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_unreadable_input_folder(tmp_path, random_model):
    assert main(["predict", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--model", str(random_model)]) == 2


def test_every_output_on_the_t2s_grid_and_tables_agree_with_the_mask(cohort, tmp_path, random_model):
    import pandas as pd

    from mixmicrobleednet.lesions import LESION_COLUMNS, label_microbleeds
    from mixmicrobleednet.regions import REGION_COLUMNS

    write_case(cohort, "nochan", seed=4)
    (cohort / layout.input_name(stem("nochan"), "T2")).unlink()
    out = tmp_path / "out"
    # A random network's probabilities hover around 0.5: a low threshold gives some "microbleeds".
    code = main(["predict", "-i", str(cohort), "-o", str(out), "--model", str(random_model), "--device", "cpu",
                 "--fast", "--save-probabilities", "--threshold", "0.45"])
    assert code == 1
    summary = pd.read_csv(out / layout.SUMMARY_CSV).set_index("subject")
    assert list(summary.index) == ["hr1", "lr3", "nochan", "ts2"]
    assert summary.loc["nochan", "status"] == "error" and "missing T2 channel" in summary.loc["nochan", "message"]
    assert (summary.drop("nochan")["status"] == "ok").all() and (summary["runtime_s"] >= 0).all()
    for subject in ("hr1", "lr3", "ts2"):
        t2s_path = cohort / layout.input_name(stem(subject), "T2S")
        mask_path = layout.prediction_path(out, stem(subject))
        probability_path = out / layout.seed_output_paths(stem(subject))["probability"]
        _assert_on_t2s_grid(mask_path, t2s_path)
        probability = sitk.ReadImage(str(probability_path))
        t2s = sitk.ReadImage(str(t2s_path))
        assert (probability.GetSize(), probability.GetSpacing(), probability.GetOrigin(), probability.GetDirection()) == \
               (t2s.GetSize(), t2s.GetSpacing(), t2s.GetOrigin(), t2s.GetDirection())
        assert probability.GetPixelID() == sitk.sitkFloat32
        p = sitk.GetArrayFromImage(probability)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
        assert 0 <= p.min() and p.max() <= 1
        np.testing.assert_array_equal(mask, (p > 0.45).astype(np.uint8))  # min size 0: every component stays
        table = pd.read_csv(out / layout.seed_output_paths(stem(subject))["lesions"])
        assert list(table.columns) == LESION_COLUMNS + REGION_COLUMNS  # regions added at the end
        assert len(table) == label_microbleeds(mask)[1] == summary.loc[subject, "microbleed_count"]
        assert table["voxel_count"].sum() == mask.sum()
        assert (out / layout.seed_output_paths(stem(subject))["qc"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "results.json").read_text())
    assert report[0]["outputs"][0]["filename"] == ["images/sub-hr1_space-T2S_prediction.nii.gz",
                                                   "images/sub-hr1_space-T2S_probability.nii.gz"]
    assert not [p for p in out.rglob("*") if "partial" in p.name]


def test_the_next_case_is_read_while_the_current_one_is_predicted(tmp_path, random_model):
    """Reading runs one case ahead in a thread, yet every case gets its own channels."""
    import threading

    folder = tmp_path / "input"
    for number in range(3):
        write_case(folder, f"c{number}", shape=(6 + number, 20, 22), seed=number)
    seen, readers = [], set()
    import mixmicrobleednet.pipeline as pipeline

    original = pipeline.load_case

    def spying_load(case, *args):
        readers.add(threading.current_thread().name)
        return original(case, *args)

    pipeline.load_case = spying_load
    try:
        run_cases(cases_for(folder, random_model), CaseRun(FunctionPredictor(lambda stack, model: seen.append(
            (stack.case_id, stack.array.shape)) or np.zeros(stack.array.shape[1:], np.float32)), tmp_path / "out"))
    finally:
        pipeline.load_case = original
    assert seen == [(stem(f"c{n}"), (3, 6 + n, 20, 22)) for n in range(3)]
    assert readers and all(name.startswith("reader") for name in readers)  # every case read in the reader thread


def test_a_case_is_finished_while_the_network_works_on_the_next(tmp_path, random_model, monkeypatch):
    """Lesions, outputs and the record of a case are made in a thread of their own while the next
    case is predicted: a case whose outputs wait for the next call would wait in vain if the two ran
    one after the other. Records still come out one per case, each with its own count."""
    import threading

    import mixmicrobleednet.pipeline as pipeline

    folder = tmp_path / "input"
    for number in range(3):
        write_case(folder, f"c{number}", shape=(6, 20, 22), seed=number)
    calls, writers = [], set()
    second_call = threading.Event()
    original = pipeline.write_case_outputs

    def predict(stack, model):
        calls.append(stack.case_id)
        if len(calls) == 2:
            second_call.set()
        probabilities = np.zeros(stack.array.shape[1:], np.float32)
        probabilities[3, 5:5 + len(calls), 5:8] = 0.9  # one microbleed per case, of its own size
        return probabilities

    def writing_after_the_next_call(case, *args):
        writers.add(threading.current_thread().name)
        if case.case_id == stem("c0"):
            assert second_call.wait(timeout=20), "the first case's outputs waited for nothing: no overlap"
        return original(case, *args)

    monkeypatch.setattr(pipeline, "write_case_outputs", writing_after_the_next_call)
    out = tmp_path / "out"
    results = run_cases(cases_for(folder, random_model), CaseRun(FunctionPredictor(predict), out))
    assert [r.error_messages for r in results] == [[], [], []]
    assert writers and all(name.startswith("finisher") for name in writers)
    volumes = {r["case_id"]: r["total_volume_mm3"] for r in records.read_records(out)}
    assert list(volumes) == [stem(f"c{n}") for n in range(3)] and len(set(volumes.values())) == 3


def test_the_first_case_is_read_while_the_model_loads(cohort, tmp_path, random_model, monkeypatch):
    """The model (PyTorch and nnU-Net imports, weights) loads while the first case is read: a model
    that waits for that read would wait in vain if the two ran one after the other."""
    import threading

    import mixmicrobleednet.pipeline as pipeline

    reading = threading.Event()
    original_load, original_model = pipeline.load_case, pipeline.Model

    def load_case(case, *args):
        reading.set()
        return original_load(case, *args)

    def model_waiting_for_the_first_read(*args):
        assert reading.wait(timeout=20), "the first case was not read while the model loaded"
        return original_model(*args)

    monkeypatch.setattr(pipeline, "load_case", load_case)
    monkeypatch.setattr(pipeline, "Model", model_waiting_for_the_first_read)
    results = predict(cohort, tmp_path / "out", random_model)
    assert [r.error_messages for r in results] == [[], [], []]


def test_records_hold_each_stage_with_its_time_as_the_benchmark_reads_it(cohort, tmp_path, random_model):
    """benchmarks/predict_speed.py reads the stage times and the sliding window from the records of
    `mixmicrobleednet predict`."""
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from predict_speed import _stages

    from mixmicrobleednet import records

    run = subprocess.run([str(Path(sys.executable).parent / "mixmicrobleednet"), "predict", "-i", str(cohort),
                          "-o", str(tmp_path / "out"), "--model", str(random_model), "--device", "cpu", "--fast"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    stages = _stages(records.read_records(tmp_path / "out"))
    assert list(stages) == [stem(s) for s in ("hr1", "lr3", "ts2")]
    for seconds in stages.values():
        assert {"read", "preprocess", "prediction", "network", "resample", "lesions", "write", "regions",
                "preprocessed_ahead", "tiles", "passes_per_tile", "tiles_rechecked"} <= set(seconds)
        assert all(value >= 0 for value in seconds.values())
        assert seconds["preprocessed_ahead"] is True  # in the reader thread, beside the model's loading or the network
        assert seconds["tiles"] >= 1 and seconds["passes_per_tile"] == 1  # --fast: no mirrored passes
        assert seconds["tiles_rechecked"] <= seconds["tiles"]
        assert seconds["network"] + seconds["resample"] <= seconds["prediction"] + 0.02  # each rounded to 0.01 s


def test_prediction_options_from_the_environment_and_the_command_line_wins(monkeypatch, capsys):
    import argparse

    from mixmicrobleednet.options import add_options

    def parse(*argv):
        parser = argparse.ArgumentParser()
        add_options(parser, "container")
        return parser.parse_args(argv)

    assert (parse().fast, parse().threshold, parse().device, parse().precision) == (False, 0.5, "auto", "float32")
    monkeypatch.setenv("MIXMICROBLEEDNET_PRECISION", "bfloat16")
    assert parse().precision == "bfloat16"
    monkeypatch.setenv("MIXMICROBLEEDNET_FAST", "yes")
    monkeypatch.setenv("MIXMICROBLEEDNET_THRESHOLD", "0.7")
    monkeypatch.setenv("MIXMICROBLEEDNET_DEVICE", "cpu")
    monkeypatch.setenv("MIXMICROBLEEDNET_NO_QC", "0")
    args = parse()
    assert (args.fast, args.threshold, args.device, args.no_qc) == (True, 0.7, "cpu", False)
    assert parse("--threshold", "0.3").threshold == 0.3
    assert parse().edge_margin_mm is None  # decided per case by how its brain mask was found
    monkeypatch.setenv("MIXMICROBLEEDNET_EDGE_MARGIN_MM", "3")
    assert (parse().edge_margin_mm, parse("--edge-margin-mm", "2.5").edge_margin_mm) == (3.0, 2.5)
    monkeypatch.setenv("MIXMICROBLEEDNET_THRESHOLD", "2")
    with pytest.raises(SystemExit):
        parse()
    assert "MIXMICROBLEEDNET_THRESHOLD='2': must be a probability" in capsys.readouterr().err


def test_edge_margin_uses_the_skull_stripped_scans_own_brain_with_its_holes_filled(tmp_path, random_model):
    """A microbleed 1-2 voxels inside the brain's edge is dropped with --edge-margin-mm 2; one at the
    centre stays although its darkest voxel equals the background value (a hole, not the edge)."""
    paths = write_case(tmp_path / "input", "e1", shape=(20, 40, 36), spacing_xyz=(0.8, 0.8, 1.2))
    t2s = sitk.ReadImage(str(paths["T2S"]))
    values = sitk.GetArrayFromImage(t2s)
    values[10, 20, 18] = 0
    written = sitk.GetImageFromArray(values)
    written.CopyInformation(t2s)
    sitk.WriteImage(written, str(paths["T2S"]))

    def two_dots(stack, model):
        probabilities = np.zeros(stack.array.shape[1:], np.float32)
        probabilities[10, 20, 18] = probabilities[10, 20, 33] = 1  # the centre; 1-2 voxels from the edge
        return probabilities

    for margin, expected in ((0.0, 2), (2.0, 1)):
        out = tmp_path / f"out-{margin}"
        [result] = run_cases(cases_for(tmp_path / "input", random_model),
                             CaseRun(FunctionPredictor(two_dots), out, settings=OutputSettings(lesions=LesionSettings(edge_margin_mm=margin))))
        assert not result.error_messages and result.microbleed_count == expected
        record = json.loads((out / layout.RECORDS_DIR / layout.record_name(stem("e1"))).read_text())
        assert record["settings"]["output"]["lesions"]["edge_margin_mm"] == margin
        assert record["edge_rule"]["edge_margin_mm"] == margin and len(record["edge_rule"]["near_edge"]) == 2 - expected
    table = np.loadtxt(out / result.outputs["lesions"], delimiter=",", skiprows=1, usecols=(1, 2, 3), ndmin=2)
    np.testing.assert_allclose(table, [[18, 20, 10]])  # the centre one (i, j, k)


def test_edge_margin_defaults_to_the_models_where_the_tool_extracted_the_brain_and_to_0_for_a_given_mask(
        tmp_path, random_model, monkeypatch):
    """The same brain mask, once as the tool's extraction (deepbet stood in for by the scan's own
    brain), once given by the user: a microbleed 3 mm inside its edge is dropped by default only
    where the tool extracted the mask and the model's margin (4 mm where its plans do not say, 2 mm
    where they do) reaches it; --edge-margin-mm wins; the record says what was applied."""
    from mixmicrobleednet import brain
    from mixmicrobleednet.brain import BrainMasking, BrainSettings
    from mixmicrobleednet.modelfolder import EDGE_MARGIN

    model_2mm = tmp_path / "model-2mm"
    shutil.copytree(random_model, model_2mm)
    plans = json.loads((model_2mm / layout.PLANS_JSON).read_text())
    (model_2mm / layout.PLANS_JSON).write_text(json.dumps(plans | {EDGE_MARGIN: 2.0}))

    paths = write_case(tmp_path / "input", "x1", shape=(24, 40, 36), spacing_xyz=(3.0, 3.0, 3.0))
    monkeypatch.setattr(brain, "extract_brain", lambda image, use_gpu: sitk.Cast(image > 0, sitk.sitkUInt8))
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(paths["T2S"])) > 0, sitk.sitkUInt8), str(tmp_path / "mask.nii.gz"))

    def two_dots(stack, model):
        probabilities = np.zeros(stack.array.shape[1:], np.float32)
        probabilities[12, 20, 18] = probabilities[12, 20, 34] = 1  # the centre; 3 mm inside the edge
        return probabilities

    for name, model, masking, margin, expected in (
            ("extracted", random_model, BrainSettings(masking=BrainMasking.EXTRACT), None, (4.0, 1)),
            ("extracted-model-2mm", model_2mm, BrainSettings(masking=BrainMasking.EXTRACT), None, (2.0, 0)),
            ("given", model_2mm, BrainSettings(masking=BrainMasking.GIVEN, given=tmp_path / "mask.nii.gz"), None, (0.0, 0)),
            ("extracted-0", random_model, BrainSettings(masking=BrainMasking.EXTRACT), 0.0, (0.0, 0)),
            ("extracted-5", model_2mm, BrainSettings(masking=BrainMasking.EXTRACT), 5.0, (5.0, 1))):
        out = tmp_path / name
        [result] = run_cases(cases_for(tmp_path / "input", model),
                             CaseRun(FunctionPredictor(two_dots), out, settings=OutputSettings(lesions=LesionSettings(edge_margin_mm=margin)),
                                     brain=masking))
        assert not result.error_messages, result.error_messages
        record = json.loads((out / layout.RECORDS_DIR / layout.record_name(stem("x1"))).read_text())
        assert record["brain_mask"]["extracted"] is (masking.masking is BrainMasking.EXTRACT)
        assert (record["edge_rule"]["edge_margin_mm"], len(record["edge_rule"]["near_edge"])) == expected
        assert result.microbleed_count == 2 - expected[1]
        summary = pd.read_csv(out / layout.SUMMARY_CSV)
        assert tuple(summary.loc[0, ["edge_margin_mm", "near_edge_count"]]) == expected
    (model_2mm / layout.PLANS_JSON).write_text(json.dumps(plans | {EDGE_MARGIN: -1}))
    with pytest.raises(ModelError, match=f"{EDGE_MARGIN} must be 0 mm or more"):
        cases_for(tmp_path / "input", model_2mm)


def test_network_inputs_writes_cases_as_the_pipeline_hands_them_to_the_network(tmp_path, monkeypatch, capsys, caplog):
    """benchmarks/network_inputs.py: each labelled case's channels exactly as load_case gives them,
    on the T2* grid, its label linked; a case without a label is named and skipped; a rerun skips
    what is written."""
    import sys
    from pathlib import Path

    from mixmicrobleednet.cases import seed_cases
    from mixmicrobleednet.imaging import load_case
    from mixmicrobleednet.phantoms import generate

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from network_inputs import main as network_inputs

    generate(tmp_path / "cases", 2, seed=5, cohorts=["lowres"])
    unlabelled = seed_cases(tmp_path / "cases")[1].case_id
    (tmp_path / "cases" / layout.label_name(unlabelled)).unlink()
    monkeypatch.setattr(sys, "argv", ["network_inputs.py", "--cases", str(tmp_path / "cases"), "--out", str(tmp_path / "out")])
    network_inputs()
    assert f"{unlabelled}: no label" in caplog.text
    labelled = seed_cases(tmp_path / "cases")[0]
    assert capsys.readouterr().out.startswith(f"{labelled.case_id}: ")  # the written case, how it was masked
    written = seed_cases(tmp_path / "out")
    assert [c.case_id for c in written] == [labelled.case_id]
    expected = load_case(labelled)
    for index, channel in enumerate(layout.CHANNELS):
        image = sitk.ReadImage(str(written[0].channel_paths[channel]))
        assert image.GetSize() == expected.reference.GetSize() and image.GetOrigin() == expected.reference.GetOrigin()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected.array[index])
    label = tmp_path / "out" / layout.label_name(written[0].case_id)
    assert label.is_symlink() and label.resolve() == (tmp_path / "cases" / label.name).resolve()
    network_inputs()
    assert written[0].case_id not in capsys.readouterr().out  # already written: skipped silently
