"""The cluster tier: a real single-node SLURM cluster (scripts/slurm-cluster.sh: slurmctld, slurmd,
munge on this machine), the project's documented job scripts (slurm/submit.sh: one array task per
participant, then the group step with --dependency=afterok) over a BIDS phantom dataset, run with
the venv's `mixmicrobleednet` (the README's plain-venv alternative to Apptainer)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.bids import bids_cases

from conftest import BIDS_VISITS, REPO, write_bids_dataset
from test_bids import validator_errors

pytestmark = [pytest.mark.cluster]
WAIT_S = 600


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def cluster():
    start = subprocess.run([str(REPO / "scripts" / "slurm-cluster.sh")], capture_output=True, text=True)
    assert start.returncode == 0, f"no SLURM cluster (the cluster tier needs root to start one): {start.stderr[-2000:]}"
    return True


def job_state(job_id: str) -> list[str]:
    """The states of a job's tasks (finished jobs stay in slurmctld's memory for MinJobAge, 300 s)."""
    return re.findall(r"JobState=(\S+)", slurm("scontrol", "show", "job", job_id))


def wait_for(*job_ids: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while slurm("squeue", "-h", "-j", ",".join(job_ids)).strip():
        assert time.monotonic() < deadline, slurm("squeue")
        time.sleep(2)


def test_array_job_and_dependent_group_job_over_a_bids_dataset(cluster, random_model, tmp_path):
    raw = write_bids_dataset(tmp_path / "raw")
    out = tmp_path / "derivatives"
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                   "MIXMICROBLEEDNET_SBATCH": "--cpus-per-task=1 --mem-per-cpu=3G"}
    submit = subprocess.run([str(REPO / "slurm" / "submit.sh"), str(raw), str(out), "--model", str(random_model),
                             "--device", "cpu", "--fast"], capture_output=True, text=True, env=environment)
    assert submit.returncode == 0, submit.stderr
    array_id, group_id = submit.stdout.split()
    wait_for(array_id, group_id)
    logs = {path.name: path.read_text() for path in (out / "logs").glob("*.log")}
    assert job_state(array_id) == ["COMPLETED"] * 3, logs
    assert job_state(group_id) == ["COMPLETED"], logs

    # one task per participant, each loading the model once and running its own cases only
    for task, subject in enumerate(sorted({s for s, _ in BIDS_VISITS}), 1):
        log = logs[f"mixmicrobleednet_{array_id}_{task}.log"]
        assert f"array task {task} on " in log and f": sub-{subject}" in log
        sessions = sum(s == subject for s, _ in BIDS_VISITS)
        assert f"{sessions} case(s): {sessions} ok (0 finished before), 0 failed" in log
        assert log.count("case(s) in ") == 1  # one run, one model load, per task
    for case in bids_cases(raw, layout.CHANNELS):
        for kind in ("mask", "mask_sidecar", "lesions", "qc", "record"):
            assert (out / case.output_paths[kind]).is_file(), (case.case_id, kind)
        mask = sitk.ReadImage(str(out / case.output_paths["mask"]))
        assert mask.GetSize() == sitk.ReadImage(str(case.channel_paths["T2S"])).GetSize()
        assert json.loads((out / case.output_paths["record"]).read_text())["status"] == "ok"
    cohort = pd.read_csv(out / layout.BIDS_COHORT_TSV, sep="\t")
    assert list(cohort["case"]) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"]
    assert set(cohort["status"]) == {"ok"}
    assert validator_errors(out) == []

    # a re-submitted (or requeued) task skips what is finished
    mask = out / bids_cases(raw, layout.CHANNELS, ("02",))[0].output_paths["mask"]
    written = mask.stat().st_mtime_ns
    again = subprocess.run(["sbatch", "--wait", "--parsable", "--array=2", "--cpus-per-task=1",
                            f"--output={out}/logs/again_%a.log", str(REPO / "slurm" / "participant.sbatch"),
                            str(raw), str(out), "--model", str(random_model), "--device", "cpu", "--fast"],
                           capture_output=True, text=True, env=environment)
    assert again.returncode == 0, again.stderr + (out / "logs" / "again_2.log").read_text()
    log = (out / "logs" / "again_2.log").read_text()
    assert "sub-02_ses-1: skipped, finished at" in log and "sub-02_ses-2: skipped, finished at" in log
    assert mask.stat().st_mtime_ns == written
