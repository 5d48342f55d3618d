"""Train a MixMicrobleedNet model with nnU-Net v2 from cases in the seed layout.

Steps: seed layout → nnU-Net raw dataset (T1/T2 aligned on T2* as at inference) → plans for the
chosen configuration → nnU-Net preprocessing → nnUNetTrainer on fold `all` → an exported model
folder (dataset.json, plans.json, fold_all/checkpoint_final.pth with weights only) that
`mixmicrobleednet predict --model` loads.

nnU-Net v2 (2.8) reads its folders from environment variables each time it needs them, so this
module points them at a work folder for the duration of the run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from scipy import ndimage

from . import layout
from .cases import Case, seed_cases
from .device import in_processes
from .files import atomic_output, write_json_value
from .imaging import image_like, load_case
from .modelfolder import MIMIC_CHECK, MimicCheck, ModelFolder, read_model_folder
from .options import FOREGROUND_SAMPLING

log = logging.getLogger(__name__)

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID:03d}_MixMicrobleedNet"
PLANS_NAME = "nnUNetPlans"
LABELS = {"background": 0, "CMB": 1}
LOCATIONS_PER_LESION = 64  # voxels kept per microbleed: the sampler then picks microbleeds evenly


@dataclass(frozen=True)
class TrainingConfig:
    """One network and schedule: the nnU-Net configuration written into the plans."""

    name: str
    spacing: tuple[float, float, float]  # z, y, x in mm
    patch_size: tuple[int, int, int]
    features_per_stage: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]
    batch_size: int
    epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    oversample_foreground: float
    initial_lr: float = 1e-2
    kernel_sizes: tuple[tuple[int, int, int], ...] | None = None  # per stage; default 3x3x3 everywhere
    conv_per_stage: int = 2

    @property
    def configuration(self) -> str:
        return f"3d_{self.name.replace('-', '_')}"


CONFIGS: dict[str, TrainingConfig] = {
    # The paper's 3d_fullres, values from the v1 plans (../shared/reference): stage 1 of
    # nnUNetPlansv2.1, 0.8 x 0.488 x 0.488 mm, patch 96x192x128, 6 stages of 32..320 features.
    "mixmicrobleednet-v1": TrainingConfig(
        name="mixmicrobleednet-v1", spacing=(0.80000001, 0.48828101, 0.48828101), patch_size=(96, 192, 128),
        features_per_stage=(32, 64, 128, 256, 320, 320),
        strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        batch_size=2, epochs=1000, iterations_per_epoch=250, val_iterations_per_epoch=50,
        oversample_foreground=0.33,
    ),
    # Small enough to train on a 2-core CPU in about an hour; microbleeds are 2-10 mm, so a
    # 1.2 x 0.8 x 0.8 mm grid still gives even the smallest ones a few voxels.
    "compact": TrainingConfig(
        name="compact", spacing=(1.2, 0.8, 0.8), patch_size=(32, 64, 64),
        features_per_stage=(8, 16, 32, 64, 80),
        strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        batch_size=2, epochs=32, iterations_per_epoch=100, val_iterations_per_epoch=10,
        # nnU-Net's 0.01 made this small network collapse to all-background after 4 epochs here.
        oversample_foreground=0.5, initial_lr=3e-3,
    ),
}


def dataset_json(channels: tuple[str, ...], labels: dict[str, int], **extra) -> dict:
    """dataset.json of a model folder (and of an nnU-Net raw dataset) with these channels."""
    return {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
            "file_ending": layout.NIFTI, **extra}


def write_model_folder(out_dir: Path, plans: dict, dataset: dict, checkpoint: dict) -> Path:
    """Write plans.json, dataset.json and the checkpoint (a dict for torch.save), each atomically
    and the checkpoint last: a folder without it is no model folder, so an interrupted write is
    never used."""
    import torch

    out_dir = Path(out_dir)
    for name, content in ((layout.PLANS_JSON, plans), (layout.DATASET_JSON, dataset)):
        write_json_value(content, out_dir / name, indent=2)
    with atomic_output(out_dir / layout.CHECKPOINT) as temporary:
        torch.save(checkpoint, temporary)
    return out_dir


def write_mimic_check(model_dir: Path, check: MimicCheck) -> None:
    """Add (or replace) a model folder's mimic check in its plans.json, atomically: fitted after
    training, so the checksum that records carry changes with it."""
    path = Path(model_dir) / layout.PLANS_JSON
    plans = json.loads(path.read_text())
    plans[MIMIC_CHECK] = check.as_plans()
    write_json_value(plans, path, indent=2)


def configuration_plans(config: TrainingConfig, median_shape: list[int], n_channels: int = len(layout.CHANNELS)) -> dict:
    """The nnU-Net v2 plans entry for one configuration (same keys as ExperimentPlanner writes)."""
    n_stages = len(config.features_per_stage)
    return {
        "data_identifier": f"{PLANS_NAME}_{config.configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": config.batch_size,
        "patch_size": list(config.patch_size),
        "median_image_size_in_voxels": median_shape,
        "spacing": list(config.spacing),
        # Z-score inside the brain mask: the inputs are brain-masked ("desc-masked").
        "normalization_schemes": ["ZScoreNormalization"] * n_channels,
        "use_mask_for_norm": [True] * n_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": list(config.features_per_stage),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [list(k) for k in config.kernel_sizes] if config.kernel_sizes else [[3, 3, 3]] * n_stages,
                "strides": [list(s) for s in config.strides],
                "n_conv_per_stage": [config.conv_per_stage] * n_stages,
                "n_conv_per_stage_decoder": [config.conv_per_stage] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": True,
    }


def make_plans(config: TrainingConfig, median_spacing: list[float], median_shape: list[int],
               channels: tuple[str, ...] = layout.CHANNELS) -> dict:
    return {
        "dataset_name": DATASET_NAME,
        "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": median_spacing,
        "original_median_shape_after_transp": median_shape,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {config.configuration: configuration_plans(config, median_shape, len(channels))},
        "experiment_planner_used": f"mixmicrobleednet.train ({config.name})",
        "label_manager": "LabelManager",
        # Only CT normalisation reads these; kept so the plans have nnU-Net's full shape.
        "foreground_intensity_properties_per_channel": {
            str(i): {"max": 0.0, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0,
                     "percentile_99_5": 0.0, "std": 1.0} for i in range(len(channels))
        },
    }


def build_network(plans: dict, configuration: str, n_channels: int = len(layout.CHANNELS),
                  deep_supervision: bool = False):
    """The PyTorch network nnU-Net builds for these plans (used by training, import and tests)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plans["configurations"][configuration]["architecture"]
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  n_channels, len(LABELS), allow_init=True,
                                  deep_supervision=deep_supervision)


def training_cases(data_dir: Path) -> list[tuple[Case, Path]]:
    """Cases of the seed layout that have a label file beside them."""
    pairs = []
    for case in seed_cases(data_dir):
        label = data_dir / layout.label_name(case.case_id)
        if label.is_file():
            pairs.append((case, label))
        else:
            log.warning("%s: no label %s, not used for training", case.case_id, label.name)
    if not pairs:
        raise ValueError(f"{data_dir}: no cases with labels (expected "
                         f"{layout.label_name(layout.case_stem('<id>'))} beside the inputs)")
    return pairs


def reviewed_training_data(output_dir: Path, input_dir: Path | None, data_dir: Path) -> list[str]:
    """Training cases from a cohort's reviews (`train --from-reviews`): per case whose latest finished
    review decided every detection (accept or reject), its run's input files (linked, seed-layout
    names) and that review's reviewed mask as the label (accepted components and a ball per added
    microbleed; rejected ones are background). Cases not finished, or with unsure or undecided
    detections, are left out with why. Returns the case stems written."""
    from . import decisions, records
    from .longitudinal import raw_dataset

    input_dir = input_dir or raw_dataset(output_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for record in records.read_records(output_dir):
        values = decisions.reviewed_values(output_dir, record)
        case_id = record["case_id"]
        if values["review_status"] != "done":
            log.info("%s: not used (review %s)", case_id, values["review_status"])
            continue
        if values["reviewed_unsure"] or values["reviewed_undecided"]:
            log.warning("%s: not used: %s's review leaves %d detection(s) unsure or undecided", case_id,
                        values["review_rater"], values["reviewed_unsure"] + values["reviewed_undecided"])
            continue
        inputs = {entry["channel"]: decisions.input_path(record, input_dir, entry["channel"])
                  for entry in record["inputs"]}
        if None in inputs.values():
            log.warning("%s: not used: its input files are not in %s", case_id, input_dir)
            continue
        review = decisions.read_reviews(output_dir, record).current[values["review_rater"]]
        stem = case_id if layout.parse_input_name(layout.input_name(case_id, layout.REFERENCE_CHANNEL)) \
            else f"{case_id}_space-{layout.REFERENCE_CHANNEL}"
        for channel, path in inputs.items():
            link = data_dir / layout.input_name(stem, channel, layout.NIFTI if path.name.endswith(layout.NIFTI)
                                                else path.suffix)
            link.unlink(missing_ok=True)
            link.symlink_to(path.resolve())
        shutil.copyfile(decisions.write_reviewed_mask(output_dir, record, review), data_dir / layout.label_name(stem))
        written.append(stem)
    log.info("%d reviewed case(s) as training cases in %s", len(written), data_dir)
    return written


def write_raw_dataset(pairs: list[tuple[Case, Path]], raw_dir: Path,
                      channels: tuple[str, ...] = layout.CHANNELS, processes: int = 1) -> dict:
    """nnU-Net raw layout of `channels` (in network order), T1/T2 on the T2* grid exactly as
    `predict` aligns them (registration and brain extraction where a case needs them), the cases
    in `processes` processes."""
    images_dir, labels_dir = raw_dir / "imagesTr", raw_dir / "labelsTr"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    written = []
    # one thread per process: the processes share the cores
    for (case, _), result in zip(pairs, in_processes(functools.partial(_write_raw_case, images_dir, labels_dir,
                                                                       channels), pairs, processes, _one_thread)):
        log.info("raw dataset: %s (%s)", case.case_id, result[2])
        written.append(result)
    dataset = dataset_json(channels, LABELS, numTraining=len(pairs), name="MixMicrobleedNet",
                           description=f"Cerebral microbleeds on {', '.join(channels)} (seed layout converted by "
                                       "mixmicrobleednet train)")
    (raw_dir / layout.DATASET_JSON).write_text(json.dumps(dataset, indent=2))
    # The part of nnU-Net's dataset fingerprint that the trainer copies; our plans are written
    # from the configuration, not derived from intensity statistics.
    return {"spacings": [list(spacing) for spacing, _, _ in written],
            "shapes_before_crop": [list(map(int, shape)) for _, shape, _ in written]}


def _write_raw_case(images_dir: Path, labels_dir: Path, channels: tuple[str, ...],
                    pair: tuple[Case, Path]) -> tuple[tuple[float, ...], tuple[int, ...], str]:
    """One case of write_raw_dataset; its spacing and shape (z, y, x) and how its channels were aligned."""
    case, label_path = pair
    stack = load_case(case, channels)
    for index in range(len(channels)):
        sitk.WriteImage(image_like(stack.array[index], stack.reference),
                        str(images_dir / f"{case.case_id}_{index:04d}{layout.NIFTI}"), True, 1)
    label = sitk.ReadImage(str(label_path), sitk.sitkUInt8)
    label.CopyInformation(stack.reference)
    sitk.WriteImage(label, str(labels_dir / f"{case.case_id}{layout.NIFTI}"), True, 1)
    return (tuple(stack.spacing_zyx), tuple(stack.array.shape[1:]),
            "; ".join(f"{k}: {v}" for k, v in stack.alignment.items()))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _set_nnunet_folders(work_dir: Path) -> dict[str, str]:
    folders = {
        "nnUNet_raw": str(work_dir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work_dir / "nnUNet_preprocessed"),
        "nnUNet_results": str(work_dir / "nnUNet_results"),
    }
    os.environ.update(folders)
    os.environ.setdefault("nnUNet_compile", "false")
    return folders


def train(data_dir: Path, out_dir: Path, config_name: str = "compact", device: str = "auto",
          work_dir: Path | None = None, epochs: int | None = None, iterations_per_epoch: int | None = None,
          num_processes: int = 2, channels: tuple[str, ...] = layout.CHANNELS, init_from: Path | None = None,
          initial_lr: float | None = None, resume: bool | Path = False,
          stop_after_minutes: float | None = None, foreground_sampling: str = "voxel") -> Path | None:
    """Train fold `all` on every labelled case in `data_dir` with the network reading `channels`
    (in that order; the T2* among them); export the model folder to `out_dir`. `init_from`: a model
    folder of the same configuration and channels whose weights training starts from (fine-tuning).
    `resume`: go on from the work folder's latest checkpoint (True; from the start when there is none)
    or from a checkpoint file (one carried from another machine); the data already preprocessed in
    the work folder for the same cases and channels is used as it is. `stop_after_minutes`: stop at
    the end of the first epoch that ends later (its checkpoint written), export nothing and return
    None: a time-limited job (a SLURM slot, a lent GPU) that --resume goes on from.
    `foreground_sampling`: one of FOREGROUND_SAMPLING (options.py says what each does)."""
    from .device import resolve_device

    config = CONFIGS[config_name]
    unknown = [c for c in channels if c not in layout.CHANNELS]
    if unknown or layout.REFERENCE_CHANNEL not in channels or len(set(channels)) != len(channels):
        raise ValueError(f"channels {list(channels)}: distinct channels among {', '.join(layout.CHANNELS)}, "
                         f"{layout.REFERENCE_CHANNEL} included")
    if foreground_sampling not in FOREGROUND_SAMPLING:
        raise ValueError(f"foreground sampling {foreground_sampling!r}: one of {', '.join(FOREGROUND_SAMPLING)}")
    initial = read_model_folder(Path(init_from)) if init_from else None
    if initial and initial.channels != channels:
        raise ValueError(f"--init {init_from}: its channels {', '.join(initial.channels)} are not the training's "
                         f"{', '.join(channels)}")
    work_dir = Path(work_dir or out_dir.parent / f"{out_dir.name}.nnunet-work")
    folders = _set_nnunet_folders(work_dir)
    os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, num_processes - 1)))
    torch_device = resolve_device(device)
    started = time.time()

    raw_dir = Path(folders["nnUNet_raw"]) / DATASET_NAME
    preprocessed_dir = Path(folders["nnUNet_preprocessed"]) / DATASET_NAME
    pairs = training_cases(data_dir)
    # What the preprocessed data was made from: a resumed training reuses it only for the same cases.
    made_from = {"cases": sorted(case.case_id for case, _ in pairs), "channels": list(channels),
                 "configuration": config.configuration, "foreground_sampling": foreground_sampling}
    made_from_file = preprocessed_dir / "made_from.json"
    reuse = bool(resume) and made_from_file.is_file() and json.loads(made_from_file.read_text()) == made_from
    if reuse:
        log.info("resuming: the data preprocessed in %s is reused", preprocessed_dir)
        plans = json.loads((preprocessed_dir / f"{PLANS_NAME}.json").read_text())
    else:
        plans = _prepare_dataset(pairs, raw_dir, preprocessed_dir, config, channels, num_processes,
                                 foreground_sampling)
        made_from_file.write_text(json.dumps(made_from, indent=2))

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    dataset_json = json.loads((raw_dir / "dataset.json").read_text())
    trainer = nnUNetTrainer({**plans, "continue_training": False}, config.configuration, "all", dataset_json, device=torch_device)
    trainer.save_every = 1  # a checkpoint every epoch: a killed training loses minutes, not hours
    trainer.num_epochs = epochs or config.epochs
    trainer.num_iterations_per_epoch = iterations_per_epoch or config.iterations_per_epoch
    trainer.num_val_iterations_per_epoch = min(config.val_iterations_per_epoch, trainer.num_iterations_per_epoch)
    trainer.oversample_foreground_percent = config.oversample_foreground
    trainer.initial_lr = initial_lr or config.initial_lr
    if initial:
        _start_from(trainer, initial)
    checkpoint = _resume_checkpoint(resume, Path(trainer.output_folder))
    if checkpoint:
        _load_progress(trainer, checkpoint)
        log.info("resuming from %s at epoch %d", checkpoint, trainer.current_epoch)
    log.info("training %s: %d epochs x %d iterations on %s", config.name, trainer.num_epochs,
             trainer.num_iterations_per_epoch, torch_device)
    if stop_after_minutes is not None:
        _stop_after(trainer, started + stop_after_minutes * 60)
    try:
        trainer.run_training()
    except _TimeUp:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):  # as nnUNetTrainer.on_train_end
            getattr(loader, "_finish", lambda: None)()
        log.info("stopped after %.1f min at epoch %d of %d; --resume goes on from %s", stop_after_minutes,
                 trainer.current_epoch, trainer.num_epochs, Path(trainer.output_folder) / "checkpoint_latest.pth")
        return None

    exported = export_model(Path(trainer.output_folder_base), out_dir)
    hours = (time.time() - started) / 3600
    _write_training_record(out_dir, config, trainer, data_dir, hours, torch_device, channels, init_from,
                           foreground_sampling, exported)
    log.info("model written to %s (%.2f h)", out_dir, hours)
    return out_dir


class _TimeUp(Exception):
    """A time-limited training's time ran out at the end of an epoch."""


def _stop_after(trainer, deadline: float) -> None:
    """Make the trainer stop at the end of the first epoch that ends after `deadline` (time.time()),
    once that epoch's checkpoint is written (save_every is 1), unless it was the last epoch anyway."""
    end_epoch = trainer.on_epoch_end

    def on_epoch_end():
        end_epoch()
        if time.time() >= deadline and trainer.current_epoch < trainer.num_epochs:
            raise _TimeUp

    trainer.on_epoch_end = on_epoch_end


def _prepare_dataset(pairs: list[tuple[Case, Path]], raw_dir: Path, preprocessed_dir: Path, config: TrainingConfig,
                     channels: tuple[str, ...], num_processes: int, foreground_sampling: str = "voxel") -> dict:
    """nnU-Net's raw dataset, plans and preprocessed data for `config`; returns the plans."""
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    fingerprint = write_raw_dataset(pairs, raw_dir, channels, num_processes)
    preprocessed_dir.mkdir(parents=True, exist_ok=True)
    (preprocessed_dir / "dataset_fingerprint.json").write_text(json.dumps(fingerprint, indent=2))
    plans = make_plans(config, [float(v) for v in np.median(fingerprint["spacings"], 0)],
                       [int(v) for v in np.median(fingerprint["shapes_before_crop"], 0)], channels)
    (preprocessed_dir / f"{PLANS_NAME}.json").write_text(json.dumps(plans, indent=2))
    shutil.copy(raw_dir / "dataset.json", preprocessed_dir / "dataset.json")

    log.info("preprocessing %s to %s mm, foreground sampled per %s", config.configuration, config.spacing,
             foreground_sampling)
    preprocessor = LesionBalancedPreprocessor if foreground_sampling == "lesion" else DefaultPreprocessor
    preprocessor(verbose=False).run(DATASET_NAME, config.configuration, PLANS_NAME, num_processes)
    return plans


def lesion_balanced_locations(seg: np.ndarray, seed: int = 1234) -> np.ndarray | list:
    """Foreground locations as nnU-Net's preprocessing keeps them (rows of channel, z, y, x of the
    (1, z, y, x) label) with LOCATIONS_PER_LESION voxels of each microbleed (a connected component),
    drawn with replacement; [] without one, as nnU-Net writes it."""
    lesions, count = ndimage.label(seg[0] == LABELS["CMB"])
    if not count:
        return []
    rng = np.random.RandomState(seed)
    picked = []
    for number, box in enumerate(ndimage.find_objects(lesions), start=1):
        voxels = np.argwhere(lesions[box] == number) + [s.start for s in box]
        picked.append(voxels[rng.randint(len(voxels), size=LOCATIONS_PER_LESION)])
    rows = np.concatenate(picked)
    return np.column_stack([np.zeros(len(rows), rows.dtype), rows])


class LesionBalancedPreprocessor(DefaultPreprocessor):
    """nnU-Net 2.8.1's preprocessing with the microbleed locations of lesion_balanced_locations
    (foreground_sampling "lesion"): its data loader picks a listed voxel, so each microbleed is then
    a patch's centre as often as any other. At module level: nnU-Net's spawned workers unpickle it."""

    @staticmethod
    def _sample_foreground_locations(seg, classes_or_regions, seed=1234, verbose=False, **kwargs):
        locations = DefaultPreprocessor._sample_foreground_locations(seg, classes_or_regions, seed, verbose, **kwargs)
        locations[LABELS["CMB"]] = lesion_balanced_locations(seg, seed)
        return locations


def _resume_checkpoint(resume: bool | Path, fold_dir: Path) -> Path | None:
    """The checkpoint a training goes on from: a file given, else the fold's latest (none: start)."""
    if isinstance(resume, Path):
        if not resume.is_file():
            raise ValueError(f"--resume {resume}: no such checkpoint file")
        return resume
    latest = fold_dir / "checkpoint_latest.pth"
    return latest if resume and latest.is_file() else None


#: What a carried checkpoint keeps of nnU-Net's checkpoint_latest.pth: the weights and where training
#: stood (epoch, loss curves, best EMA), not the optimizer's momentum (as large again as the weights).
PROGRESS_KEYS = ("network_weights", "current_epoch", "logging", "_best_ema", "init_args", "trainer_name",
                 "inference_allowed_mirroring_axes")


def weights_only_checkpoint(checkpoint: Path, out: Path) -> None:
    """nnU-Net's checkpoint reduced to PROGRESS_KEYS, written atomically (to commit and carry)."""
    import torch

    progress = torch.load(checkpoint, map_location="cpu", weights_only=False)
    with atomic_output(out) as temporary:
        torch.save({key: progress[key] for key in PROGRESS_KEYS}, temporary)


def _load_progress(trainer, checkpoint: Path) -> None:
    """nnU-Net's own load_checkpoint, also for a weights-only checkpoint: its optimizer starts anew
    (SGD momentum builds up again within an epoch)."""
    import torch

    if not trainer.was_initialized:
        trainer.initialize()
    progress = torch.load(checkpoint, map_location=trainer.device, weights_only=False)
    if "optimizer_state" in progress:
        trainer.load_checkpoint(str(checkpoint))
        return
    progress |= {"optimizer_state": trainer.optimizer.state_dict(), "grad_scaler_state": None}
    # nnU-Net 2.8.1's load_checkpoint takes a dict in its signature but reads only a file name
    completed = Path(trainer.output_folder) / "checkpoint_carried.pth"
    torch.save(progress, completed)
    trainer.load_checkpoint(str(completed))
    completed.unlink()


def _start_from(trainer, model: ModelFolder) -> None:
    """Load a model folder's weights, all of them, into the trainer's freshly built network (strict:
    another architecture is refused, naming the layers)."""
    import torch

    trainer.initialize()
    checkpoint = torch.load(model.path / layout.CHECKPOINT, map_location="cpu", weights_only=False)
    trainer.network.load_state_dict(checkpoint["network_weights"])
    log.info("training starts from the weights of %s", model.describe())


def export_model(results_dir: Path, out_dir: Path) -> dict:
    """Copy an nnU-Net results folder's fold `all` as a lean model folder (weights only); which
    checkpoint it took and its epoch, for training.json.

    The exported weights are nnU-Net's checkpoint_best (highest moving-average pseudo Dice on
    its validation batches, which for fold `all` are training cases): a guard against a late
    collapse of training, not a selection on held-out data. A training carried to this machine
    has none when its best epoch came before (that file stayed behind): then the final one."""
    import torch

    final = results_dir / layout.CHECKPOINT
    fold, best = final.parent, final.parent / "checkpoint_best.pth"
    kind = "best" if best.is_file() else "final"
    if kind == "final":
        log.warning("no checkpoint_best.pth in %s (the best epoch was trained on another machine): exporting the "
                    "final epoch's weights", fold)
    checkpoint = torch.load(best if kind == "best" else final, map_location="cpu", weights_only=False)
    lean = {k: checkpoint[k] for k in ("network_weights", "init_args", "trainer_name",
                                       "inference_allowed_mirroring_axes", "current_epoch")}
    write_model_folder(out_dir, *(json.loads((results_dir / name).read_text())
                                  for name in (layout.PLANS_JSON, layout.DATASET_JSON)), lean)
    for extra in ("progress.png",):
        if (fold / extra).is_file():
            shutil.copy(fold / extra, (out_dir / layout.CHECKPOINT).parent / extra)
    return {"checkpoint": kind, "epoch": checkpoint["current_epoch"]}


def write_random_model(out_dir: Path, config_name: str = "compact", seed: int = 0,
                       channels: tuple[str, ...] = layout.CHANNELS) -> Path:
    """A model folder with a configuration's architecture and random weights, for `channels`: for
    plumbing tests and speed measurements (the network's cost does not depend on its weights), not
    for masks."""
    import torch

    config = CONFIGS[config_name]
    plans = make_plans(config, list(config.spacing), [20, 40, 36], channels)
    torch.manual_seed(seed)
    network = build_network(plans, config.configuration, len(channels))
    return write_model_folder(out_dir, plans, dataset_json(channels, LABELS, numTraining=0, name=DATASET_NAME),
                              {"network_weights": network.state_dict(),
                               "init_args": {"configuration": config.configuration},
                               "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)})


def _write_training_record(out_dir: Path, config: TrainingConfig, trainer, data_dir: Path, hours: float, device,
                           channels: tuple[str, ...], init_from: Path | None, foreground_sampling: str,
                           exported: dict) -> None:
    import platform

    import torch

    logged = trainer.logger.local_logger.my_fantastic_logging
    record = {
        "config": config.name,
        "configuration": config.configuration,
        "channels": list(channels),
        "epochs": trainer.num_epochs,
        "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "initial_lr": trainer.initial_lr,
        # the epochs of every run a resumed training took (nnU-Net keeps their times in the checkpoint)
        "training_hours": round(sum(end - start for start, end in zip(logged["epoch_start_timestamps"],
                                                                       logged["epoch_end_timestamps"])) / 3600, 3),
        "this_run_hours": round(hours, 3),  # the last run's wall time, preprocessing included
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "training_data": str(data_dir),
        "initialised_from": str(init_from) if init_from else None,
        "foreground_sampling": foreground_sampling,
        "final_train_loss": float(logged["train_losses"][-1]),
        "final_val_loss": float(logged["val_losses"][-1]),
        "final_pseudo_dice": float(logged["mean_fg_dice"][-1]),
        "exported": exported,  # checkpoint_best's weights, or the final epoch's where the best stayed behind
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
