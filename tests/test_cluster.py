"""The cluster tier: a real single-node SLURM cluster (scripts/slurm-cluster.sh: slurmctld, slurmd,
munge on this machine), the project's documented job scripts (slurm/submit.sh: one array task per
participant, then the group step with --dependency=afterany) over a BIDS phantom dataset, run with
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
# The venv's `mixmicrobleednet` on PATH; one CPU a task, so two tasks run at once on a 2-core machine.
ENVIRONMENT = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "MIXMICROBLEEDNET_SBATCH": "--cpus-per-task=1 --mem-per-cpu=3G"}


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def cluster():
    start = subprocess.run([str(REPO / "scripts" / "slurm-cluster.sh")], capture_output=True, text=True)
    assert start.returncode == 0, f"no SLURM cluster (the cluster tier needs root to start one): {start.stderr[-2000:]}"
    return True


def job_states(job_id: str) -> list[tuple[str, str]]:
    """Each task's state and exit code, by array task id (finished jobs stay in slurmctld's memory
    for MinJobAge, 300 s; the cluster keeps no accounting for sacct)."""
    tasks = re.findall(r"JobId=\d+ (?:ArrayJobId=\d+ ArrayTaskId=(\d+) )?.*?JobState=(\S+).*?\bExitCode=(\S+)",
                       slurm("scontrol", "show", "job", job_id), re.DOTALL)
    return [(state, exit_code) for _, state, exit_code in sorted(tasks, key=lambda task: int(task[0] or 0))]


def wait_for(*job_ids: str) -> None:
    """Until the jobs have left the queue. One that never can start (a dependency on a failed job)
    or outlives WAIT_S fails the test and is cancelled, so that no test leaves a job behind."""
    deadline = time.monotonic() + WAIT_S
    while queue := slurm("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r").strip():
        if "DependencyNeverSatisfied" in queue or time.monotonic() > deadline:
            slurm("scancel", *job_ids)
            pytest.fail(f"left in the queue:\n{queue}")
        time.sleep(2)


def submit(raw: Path, out: Path, model: Path) -> tuple[str, str]:
    """slurm/submit.sh as the README has it, on the CPU; the array job's and the group job's ids."""
    run = subprocess.run([str(REPO / "slurm" / "submit.sh"), str(raw), str(out), "--model", str(model),
                          "--device", "cpu", "--fast"], capture_output=True, text=True, env=ENVIRONMENT)
    assert run.returncode == 0, run.stderr
    array_id, group_id = run.stdout.split()
    return array_id, group_id


def job_logs(out: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in (out / "logs").glob("*.log")}


def test_array_job_and_dependent_group_job_over_a_bids_dataset(cluster, random_model, tmp_path):
    raw = write_bids_dataset(tmp_path / "raw")
    out = tmp_path / "derivatives"
    array_id, group_id = submit(raw, out, random_model)
    wait_for(array_id, group_id)
    logs = job_logs(out)
    assert job_states(array_id) == [("COMPLETED", "0:0")] * 3, logs
    assert job_states(group_id) == [("COMPLETED", "0:0")], logs

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
                           capture_output=True, text=True, env=ENVIRONMENT)
    assert again.returncode == 0, again.stderr + (out / "logs" / "again_2.log").read_text()
    log = (out / "logs" / "again_2.log").read_text()
    assert "sub-02_ses-1: skipped, finished at" in log and "sub-02_ses-2: skipped, finished at" in log
    assert mask.stat().st_mtime_ns == written


def test_a_failed_participant_is_listed_in_the_cohort_table_and_leaves_an_empty_queue(cluster, random_model, tmp_path):
    """sub-03's T2starw image is unreadable: its task fails (exit 1), the group step runs all the
    same (afterany), lists the failure in cohort.tsv and exits 1 in turn; no job is left queued."""
    raw = write_bids_dataset(tmp_path / "raw")
    (raw / "sub-03/anat/sub-03_T2starw.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "derivatives"
    array_id, group_id = submit(raw, out, random_model)
    wait_for(array_id, group_id)
    logs = job_logs(out)
    assert job_states(array_id) == [("COMPLETED", "0:0")] * 2 + [("FAILED", "1:0")], logs
    assert job_states(group_id) == [("FAILED", "1:0")], logs
    cohort = pd.read_csv(out / layout.BIDS_COHORT_TSV, sep="\t")
    assert list(zip(cohort["case"], cohort["status"])) == \
           [("sub-01", "ok"), ("sub-02_ses-1", "ok"), ("sub-02_ses-2", "ok"), ("sub-03", "error")]
    assert cohort["message"].iloc[3].startswith("sub-03_T2starw.nii.gz: not a readable image")
    assert f"{layout.BIDS_COHORT_TSV}: 4 case(s): 1 error, 3 ok" in logs[f"mixmicrobleednet-group_{group_id}.log"]
