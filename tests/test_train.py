import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mixmicrobleednet import layout
from mixmicrobleednet.train import CONFIGS, build_network, make_plans

from conftest import REFERENCE_PLANS


def test_v1_configuration_matches_the_reference_plans():
    """The paper's 3d_fullres (stage 1 of the v1 plans) and the network it builds (~30.8 M parameters)."""
    with open(REFERENCE_PLANS, "rb") as f:  # our own reference file, trusted
        reference = pickle.load(f)
    stage = reference["plans_per_stage"][1]
    config = CONFIGS["mixmicrobleednet-v1"]
    assert list(config.patch_size) == list(stage["patch_size"])
    assert np.allclose(config.spacing, stage["current_spacing"])
    assert config.batch_size == stage["batch_size"]
    assert [list(s) for s in config.strides[1:]] == [list(s) for s in stage["pool_op_kernel_sizes"]]
    assert config.features_per_stage == tuple(min(32 * 2 ** i, 320) for i in range(len(config.features_per_stage)))
    assert reference["use_mask_for_norm"] == {0: True, 1: True, 2: True}

    plans = make_plans(config, list(config.spacing), [192, 391, 319])
    network = build_network(plans, config.configuration)
    parameters = sum(p.numel() for p in network.parameters())
    assert parameters == pytest.approx(30.8e6, rel=0.01), parameters


def test_compact_network_is_small():
    config = CONFIGS["compact"]
    network = build_network(make_plans(config, list(config.spacing), [100, 200, 200]), config.configuration)
    assert sum(p.numel() for p in network.parameters()) < 2e6  # trains on a 2-core CPU


@pytest.mark.model
def test_train_pipeline_end_to_end_exports_a_model_that_predicts(tmp_path):
    """Two lowres phantoms, one epoch of two iterations: checks the plumbing, trains no real model."""
    from mixmicrobleednet.phantoms import generate
    from mixmicrobleednet.train import train

    from conftest import predict

    data = tmp_path / "data"
    generate(data, 2, seed=9, cohorts=["lowres"])
    model_dir = train(data, tmp_path / "model", "compact", device="cpu", epochs=1, iterations_per_epoch=2)
    assert sorted(p.name for p in model_dir.iterdir()) == ["dataset.json", "fold_all", "plans.json", "training.json"]
    import torch

    checkpoint = torch.load(model_dir / "fold_all" / "checkpoint_final.pth", weights_only=False)
    assert "optimizer_state" not in checkpoint and "network_weights" in checkpoint
    results = predict(data, tmp_path / "out", model_dir)
    assert [r.error_messages for r in results] == [[], []]

    # fine-tuning (--init) starts from the model's weights: one step later they are still its own
    from mixmicrobleednet.cli import main
    from mixmicrobleednet.train import write_random_model

    tuned = train(data, tmp_path / "tuned", "compact", device="cpu", epochs=1, iterations_per_epoch=1,
                  init_from=model_dir, initial_lr=1e-4)
    start, other = checkpoint["network_weights"], torch.load(
        write_random_model(tmp_path / "other", seed=5) / "fold_all" / "checkpoint_final.pth")["network_weights"]
    after = torch.load(tuned / "fold_all" / "checkpoint_final.pth")["network_weights"]
    moved = sum(float((after[k].float() - start[k].float()).norm()) for k in start)
    assert moved < 0.1 * sum(float((other[k].float() - start[k].float()).norm()) for k in start)
    record = json.loads((tuned / "training.json").read_text())
    assert record["initialised_from"] == str(model_dir) and record["initial_lr"] == 1e-4
    t2s_only = write_random_model(tmp_path / "t2s", channels=("T2S",))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "x"), "--init", str(t2s_only)]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.model
def test_a_killed_training_resumes_from_its_latest_checkpoint_on_the_data_already_preprocessed(tmp_path, monkeypatch):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from mixmicrobleednet import train as training
    from mixmicrobleednet.phantoms import generate

    data, work = tmp_path / "data", tmp_path / "work"
    generate(data, 2, seed=9, cohorts=["lowres"])
    end_epoch = nnUNetTrainer.on_epoch_end

    def killed_after_two_epochs(trainer):
        end_epoch(trainer)
        if trainer.current_epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(nnUNetTrainer, "on_epoch_end", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        training.train(data, tmp_path / "model", "compact", device="cpu", work_dir=work, epochs=4, iterations_per_epoch=1)
    latest = next(work.rglob("checkpoint_latest.pth"))
    monkeypatch.setattr(nnUNetTrainer, "on_epoch_end", end_epoch)

    def not_again(*args):
        raise AssertionError("the preprocessed data was made again")

    monkeypatch.setattr(training, "_prepare_dataset", not_again)
    carried = tmp_path / "carried.pth"  # as committed and carried to another machine: weights and progress only
    training.weights_only_checkpoint(latest, carried)
    assert "optimizer_state" not in torch.load(carried, weights_only=False)
    model = training.train(data, tmp_path / "model", "compact", device="cpu", work_dir=work, epochs=4,
                           iterations_per_epoch=1, resume=carried)

    record = json.loads((model / "training.json").read_text())
    assert record["epochs"] == 4
    final = torch.load(next(work.rglob("training_log_*.txt")).parent / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 4
    assert len(final["logging"]["train_losses"]) == 4  # two epochs before the kill, two after: the log goes on
    epochs = list(zip(final["logging"]["epoch_start_timestamps"], final["logging"]["epoch_end_timestamps"]))
    assert len(epochs) == 4 and record["training_hours"] == round(sum(end - start for start, end in epochs) / 3600, 3)
    with pytest.raises(ValueError, match="no such checkpoint file"):
        training.train(data, tmp_path / "m2", "compact", device="cpu", work_dir=work, resume=tmp_path / "none.pth")


def test_a_training_carried_from_another_machine_exports_its_final_weights_when_the_best_stayed_behind(tmp_path):
    import torch

    from mixmicrobleednet.train import export_model, write_random_model

    results = write_random_model(tmp_path / "results")  # nnU-Net's layout: plans, dataset, fold_all/
    checkpoint = torch.load(results / layout.CHECKPOINT, weights_only=False) | {"current_epoch": 100}
    torch.save(checkpoint, results / layout.CHECKPOINT)  # checkpoint_final.pth, and no checkpoint_best.pth
    assert export_model(results, tmp_path / "model") == {"checkpoint": "final", "epoch": 100}
    torch.save(checkpoint | {"current_epoch": 80}, results / "fold_all" / "checkpoint_best.pth")
    assert export_model(results, tmp_path / "model2") == {"checkpoint": "best", "epoch": 80}
    exported = torch.load(tmp_path / "model2" / layout.CHECKPOINT, weights_only=False)
    assert exported["current_epoch"] == 80 and "optimizer_state" not in exported


@pytest.mark.model
def test_a_time_limited_training_stops_at_an_epoch_end_and_resume_goes_on(tmp_path):
    """--stop-after-minutes 0: the first epoch's checkpoint written, no model; --resume finishes it."""
    import torch

    from mixmicrobleednet.cli import main
    from mixmicrobleednet.phantoms import generate

    data, work, out = tmp_path / "data", tmp_path / "work", tmp_path / "model"
    generate(data, 2, seed=9, cohorts=["lowres"])
    command = ["train", "--data", str(data), "--out", str(out), "--work", str(work), "--epochs", "3",
               "--iterations-per-epoch", "1", "--device", "cpu"]
    assert main(command + ["--stop-after-minutes", "0"]) == 0
    assert not out.exists()
    latest = next(work.rglob("checkpoint_latest.pth"))
    assert torch.load(latest, weights_only=False)["current_epoch"] == 1
    assert main(command + ["--resume"]) == 0
    assert json.loads((out / "training.json").read_text())["epochs"] == 3
    final = torch.load(latest.parent / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3


def test_phantoms_and_training_cases_made_in_several_processes_are_those_made_in_one(tmp_path):
    """`phantoms --processes` and `train --processes` (a GPU machine's cores) give the same files as one process."""
    from mixmicrobleednet.cases import seed_cases
    from mixmicrobleednet.phantoms import generate
    from mixmicrobleednet.train import write_raw_dataset

    made = {n: generate(tmp_path / f"phantoms-{n}", 2, seed=9, cohorts=["lowres"], processes=n) for n in (1, 2)}
    assert made[1] == made[2] and len(made[1]) == 2
    one, two = tmp_path / "phantoms-1", tmp_path / "phantoms-2"
    assert (one / "microbleeds.csv").read_text() == (two / "microbleeds.csv").read_text()
    names = sorted(p.name for p in one.glob("*.nii.gz"))
    assert names == sorted(p.name for p in two.glob("*.nii.gz")) and len(names) == 2 * 5  # 3 channels, label, mimics

    def array(path):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    assert all(np.array_equal(array(one / name), array(two / name)) for name in names)
    pairs = [(case, one / layout.label_name(case.case_id)) for case in seed_cases(one)]
    grids = {n: write_raw_dataset(pairs, tmp_path / f"raw-{n}", processes=n) for n in (1, 2)}
    assert grids[1] == grids[2] and len(grids[1]["spacings"]) == 2
    written = sorted(p.relative_to(tmp_path / "raw-1") for p in (tmp_path / "raw-1").rglob("*.nii.gz"))
    assert len(written) == 2 * 4  # 3 channels and a label per case
    assert all(np.array_equal(array(tmp_path / "raw-1" / p), array(tmp_path / "raw-2" / p)) for p in written)


@pytest.mark.model
def test_lesion_sampling_lists_each_microbleed_as_often_where_nnunet_lists_its_voxels(tmp_path):
    """train --foreground-sampling lesion: nnU-Net's loader centres patches on a listed voxel, so each
    microbleed must be listed as often (nnU-Net's own preprocessing lists large ones far more)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from scipy import ndimage

    from mixmicrobleednet import train as training
    from mixmicrobleednet.cases import seed_cases
    from mixmicrobleednet.phantoms import generate

    generate(tmp_path / "data", 2, seed=9, cohorts=["lowres"])
    pairs = [(case, tmp_path / "data" / layout.label_name(case.case_id)) for case in seed_cases(tmp_path / "data")]
    listed = {}
    for sampling in ("voxel", "lesion"):
        folders = training._set_nnunet_folders(tmp_path / sampling)
        preprocessed = tmp_path / sampling / "nnUNet_preprocessed" / training.DATASET_NAME
        assert folders["nnUNet_preprocessed"] == str(preprocessed.parent)
        training._prepare_dataset(pairs, Path(folders["nnUNet_raw"]) / training.DATASET_NAME, preprocessed,
                                  CONFIGS["compact"], layout.CHANNELS, 1, sampling)
        dataset = nnUNetDatasetBlosc2(str(preprocessed / f"{training.PLANS_NAME}_{CONFIGS['compact'].configuration}"))
        per_lesion = []
        for identifier in dataset.identifiers:
            _, seg, _, properties = dataset.load_case(identifier)
            lesions, count = ndimage.label(np.asarray(seg[0]) == 1)
            rows = np.asarray(properties["class_locations"][1]).reshape(-1, 4)
            assert (rows[:, 0] == 0).all() and (lesions[tuple(rows[:, 1:].T)] > 0).all()  # every row on a microbleed
            per_lesion += np.bincount(lesions[tuple(rows[:, 1:].T)], minlength=count + 1)[1:].tolist()
        listed[sampling] = per_lesion
    assert len(listed["lesion"]) == len(listed["voxel"]) >= 4
    assert set(listed["lesion"]) == {training.LOCATIONS_PER_LESION}
    assert max(listed["voxel"]) > 5 * min(listed["voxel"])  # nnU-Net's: by size
