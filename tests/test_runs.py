"""Runs at cohort scale: records, resume after a kill, shards sharing an output folder, sessions and
spaces, model-declared channels, and what stops a run before its first case (tier: model)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.cli import main
from mixmicrobleednet.layout import case_stem as stem
from mixmicrobleednet.train import write_random_model

from conftest import predict, write_case

CLI = str(Path(sys.executable).parent / "mixmicrobleednet")


def _cohort(folder: Path, n: int = 4) -> list[str]:
    for number in range(n):
        write_case(folder, f"k{number}", shape=(16, 48, 48), seed=number)
    return [stem(f"k{number}") for number in range(n)]


def _outputs(output_dir: Path) -> dict[str, object]:
    """Every output of a run as comparable values (masks as arrays, tables as text)."""
    found = {}
    for path in sorted(output_dir.rglob("*")):
        relative = str(path.relative_to(output_dir))
        if path.name.endswith(".nii.gz"):
            found[relative] = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        elif path.suffix == ".csv" and path.name != layout.SUMMARY_CSV:
            found[relative] = path.read_text()
        elif path.is_file():
            found[relative] = None  # present (QC pictures, records: times differ between runs)
    return found


def _summary(output_dir: Path) -> pd.DataFrame:
    return pd.read_csv(output_dir / layout.SUMMARY_CSV).drop(columns="runtime_s")


def test_a_killed_run_resumes_without_recomputing_and_equals_a_clean_run(tmp_path, random_model):
    cases = _cohort(tmp_path / "in")
    # Mirroring makes each case take a few seconds, so the kill lands between records.
    command = [CLI, "predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(random_model),
               "--device", "cpu", "--threshold", "0.45"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "out" / layout.RECORDS_DIR
    deadline = time.monotonic() + 300
    while not list(records.glob("*_record.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(p.name for p in records.glob("*_record.json"))
    assert 1 <= len(finished) < len(cases), finished

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done_before = [c for c in cases if layout.record_name(c) in finished]
    for case in cases:
        skipped = f"{case}: skipped, finished at" in resumed.stderr
        assert skipped == (case in done_before), case
    assert f"case 1/{len(cases) - len(done_before)}: " in resumed.stderr

    clean = subprocess.run([*command[:5], str(tmp_path / "clean"), *command[6:]], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-3000:]
    resumed_outputs, clean_outputs = _outputs(tmp_path / "out"), _outputs(tmp_path / "clean")
    assert resumed_outputs.keys() == clean_outputs.keys()
    for name, value in clean_outputs.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(resumed_outputs[name], value, err_msg=name)
        else:
            assert resumed_outputs[name] == value, name
    pd.testing.assert_frame_equal(_summary(tmp_path / "out"), _summary(tmp_path / "clean"))
    assert json.loads((tmp_path / "out" / layout.RESULTS_JSON).read_text()) == \
        json.loads((tmp_path / "clean" / layout.RESULTS_JSON).read_text())
    assert not [p for p in (tmp_path / "out").rglob("*") if ".partial" in p.name]


def test_resume_recomputes_a_case_whose_input_or_settings_changed(tmp_path, random_model, caplog):
    cases = _cohort(tmp_path / "in", 2)
    predict(tmp_path / "in", tmp_path / "out", random_model)
    time.sleep(0.01)
    write_case(tmp_path / "in", "k1", shape=(16, 48, 48), seed=7)  # new k1 files
    with caplog.at_level("INFO"):
        predict(tmp_path / "in", tmp_path / "out", random_model, resume=True)
    assert f"{cases[0]}: skipped" in caplog.text and f"{cases[1]}: skipped" not in caplog.text
    caplog.clear()
    from mixmicrobleednet.lesions import LesionSettings
    from mixmicrobleednet.report import OutputSettings

    with caplog.at_level("INFO"):
        predict(tmp_path / "in", tmp_path / "out", random_model, resume=True,
                output=OutputSettings(lesions=LesionSettings(threshold=0.6)))
    assert "skipped" not in caplog.text


def test_two_shards_at_once_share_one_output_folder(tmp_path, random_model):
    folder = tmp_path / "in"
    cases = _cohort(folder, 3)
    write_case(folder, "k0", shape=(16, 48, 48), session="2", seed=5)  # a second session
    write_case(folder, "k0", shape=(16, 48, 48), space="T1w", seed=6)  # the same subject in another space
    cases += [stem("k0", "2"), stem("k0", space="T1w")]
    command = [CLI, "predict", "-i", str(folder), "-o", str(tmp_path / "out"), "--model", str(random_model),
               "--device", "cpu", "--fast", "--threshold", "0.45"]
    shards = [subprocess.Popen(command + ["--shard", f"{k}/2"], stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    logs = [shard.communicate()[1] for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], logs
    summary = pd.read_csv(tmp_path / "out" / layout.SUMMARY_CSV)
    assert sorted(summary["case"]) == sorted(cases)
    assert (summary["status"] == "ok").all()
    results = json.loads((tmp_path / "out" / layout.RESULTS_JSON).read_text())
    masks = sorted(entry["outputs"][0]["filename"][0] for entry in results)
    assert masks == sorted(f"images/{layout.prediction_name(c)}" for c in cases)
    for case in cases:  # each on its own input's grid: sessions and spaces are not mixed up
        t2s = sitk.ReadImage(str(folder / layout.input_name(case, "T2S")))
        mask = sitk.ReadImage(str(layout.prediction_path(tmp_path / "out", case)))
        assert mask.GetSize() == t2s.GetSize()
    assert main(["merge", str(tmp_path / "out")]) == 0
    assert sorted(pd.read_csv(tmp_path / "out" / layout.SUMMARY_CSV)["case"]) == sorted(cases)


def test_a_t2s_only_model_runs_on_t2s_only_cases_and_a_three_channel_model_needs_all(tmp_path, random_model):
    t2s_model = write_random_model(tmp_path / "t2s-model", channels=("T2S",))
    write_case(tmp_path / "in", "swi1", channels=("T2S",), seed=1)
    write_case(tmp_path / "in", "swi2", channels=("T2S",), seed=2)
    results = predict(tmp_path / "in", tmp_path / "out", t2s_model)
    assert predict.exit_code == 0 and [r.error_messages for r in results] == [[], []]
    record = json.loads((tmp_path / "out" / layout.RECORDS_DIR / layout.record_name(stem("swi1"))).read_text())
    assert record["model"]["channels"] == ["T2S"] and [i["channel"] for i in record["inputs"]] == ["T2S"]

    results = predict(tmp_path / "in", tmp_path / "out3", random_model)
    assert predict.exit_code == 1
    assert "missing T1 channel: expected file sub-swi1_space-T2S_desc-masked_T1.nii.gz, needed by model " \
           f"{random_model.name} (channels T1, T2, T2S)" in results[0].error_messages[0]


def test_a_mixed_cohort_runs_in_one_call_each_case_with_the_model_that_fits(tmp_path, random_model, monkeypatch,
                                                                            caplog):
    """--model auto (the default) over the shipped models: a case with T1, T2 and T2* gets the
    three-channel model, one with the T2* alone (or T1 and T2* without T2) the T2*-only model; each
    model loads once; the records and the summary say which model each case got."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(random_model, models / "three")
    write_random_model(models / "t2s-only", channels=("T2S",))
    monkeypatch.setenv("MIXMICROBLEEDNET_MODELS", str(models))
    write_case(tmp_path / "in", "all3", seed=1)
    write_case(tmp_path / "in", "swi", channels=("T2S",), seed=2)
    write_case(tmp_path / "in", "not2", channels=("T1", "T2S"), seed=3)
    write_case(tmp_path / "in", "all3b", seed=4)
    with caplog.at_level("INFO"):
        results = predict(tmp_path / "in", tmp_path / "out", "auto")
    assert predict.exit_code == 0 and all(not r.error_messages for r in results)
    summary = pd.read_csv(tmp_path / "out" / layout.SUMMARY_CSV).set_index("case")
    assert summary["model"].to_dict() == {stem("all3"): "three", stem("all3b"): "three", stem("not2"): "t2s-only",
                                          stem("swi"): "t2s-only"}
    record = json.loads((tmp_path / "out" / layout.RECORDS_DIR / layout.record_name(stem("not2"))).read_text())
    assert record["model"]["name"] == "t2s-only" and [i["channel"] for i in record["inputs"]] == ["T2S"]
    assert caplog.text.count("model loaded once from") == 2
    assert "model three for 2 case(s)" in caplog.text and "model t2s-only for 2 case(s)" in caplog.text

    # a shipped model by name: the three-channel one on every case, so the T2*-only case fails, naming the file
    results = predict(tmp_path / "in", tmp_path / "out-three", "three")
    assert predict.exit_code == 1
    errors = {r.case_id: r.error_messages for r in results}
    assert errors[stem("all3")] == [] and errors[stem("swi")] == [
        f"missing T1 channel: expected file {layout.input_name(stem('swi'), 'T1')}, needed by model three "
        "(channels T1, T2, T2S)"]
    # an unknown name stops the run before any case, listing the shipped ones
    caplog.clear()
    assert predict(tmp_path / "in", tmp_path / "out-x", "nosuchmodel") == [] and predict.exit_code == 2
    assert "--model nosuchmodel: neither a model folder nor a shipped model" in caplog.text
    assert "t2s-only, three; or auto" in caplog.text


def test_a_record_says_what_the_case_was_computed_from(tmp_path, random_model):
    write_case(tmp_path / "in", "r1", seed=1)
    predict(tmp_path / "in", tmp_path / "out", random_model)
    record = json.loads((tmp_path / "out" / layout.RECORDS_DIR / layout.record_name(stem("r1"))).read_text())
    t1 = tmp_path / "in" / layout.input_name(stem("r1"), "T1")
    assert record["inputs"][0] == {"channel": "T1", "file": t1.name, "size": t1.stat().st_size,
                                   "mtime_ns": t1.stat().st_mtime_ns}
    from mixmicrobleednet.modelfolder import model_checksum

    assert record["model"]["sha256"] == model_checksum(random_model)
    assert record["settings"]["prediction"]["use_mirroring"] is False
    assert record["status"] == "ok" and record["device"] == "cpu"
    assert {"nnunetv2", "torch", "mixmicrobleednet", "numpy", "SimpleITK", "python"} <= set(record["versions"])
    assert {"read", "preprocess", "prediction", "lesions", "write"} <= set(record["stage_seconds"])
    assert set(record["outputs"]) == {"mask", "lesions", "qc"}


def test_what_stops_a_run_stops_it_before_any_case_with_exit_code_2(tmp_path, random_model, caplog):
    import shutil

    write_case(tmp_path / "in", "a1")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(blocker / "out"), "--model", str(random_model)]) == 2
    assert "cannot write to the output folder" in caplog.text

    broken = tmp_path / "broken-model"
    shutil.copytree(random_model, broken)
    (broken / layout.CHECKPOINT).write_bytes(b"not a checkpoint")  # fails inside PyTorch, not our checks
    caplog.clear()
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(broken),
                 "--device", "cpu"])
    assert code == 2
    assert "cannot load the model in" in caplog.text
    assert not list((tmp_path / "out").rglob("*.nii.gz")) and not list((tmp_path / "out").rglob("*_record.json"))

    (broken / layout.DATASET_JSON).write_text(json.dumps({"channel_names": {"0": "FLAIR"}, "labels": {}}))
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(broken)]) == 2


def test_an_empty_shard_is_no_failure_but_an_unknown_participant_is(tmp_path, random_model):
    _cohort(tmp_path / "in", 1)
    common = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(random_model),
              "--device", "cpu", "--fast"]
    assert main(common + ["--shard", "2/2"]) == 0
    assert main(common + ["--participant-label", "nobody"]) == 1


def test_process_py_runs_the_seed_layout_without_docker(tmp_path, random_model, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import process

    write_case(tmp_path / "in", "gc1", seed=1)
    monkeypatch.setattr(process, "DEFAULT_MODEL", random_model)
    code = process.main(["--device", "cpu", "--fast", "--no-qc"], tmp_path / "in", tmp_path / "out")
    assert code == 0
    assert layout.prediction_path(tmp_path / "out", stem("gc1")).is_file()
    assert json.loads((tmp_path / "out" / layout.RESULTS_JSON).read_text())[0]["error_messages"] == []
    assert process.main(["--device", "cpu"], tmp_path / "missing", tmp_path / "out2") == 2
