"""`train(config)`: data → model → loop → metrics → logs and checkpoints, in that order.

`train` is the wiring, read top to bottom; the epoch loop is `engine.epochs`, the checkpoint
policy `engine.checkpointing`, which run to continue `engine.resume`, what the run does at its end
(the final test, calibration, plots, status, `TrainResult`) `finishing`. The module is `training`,
not `train`, so that `visionfit.train` stays the function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.config import TrainConfig, apply_overrides
from visionfit.config.validation import check_setup, low_res_side
from visionfit.console import logger, setup_logging
from visionfit.data.batches import preview
from visionfit.data.exclusion import exclude_files, summarize_exclusions
from visionfit.data.label_options import label_file_options
from visionfit.data.memory import choose_data_path
from visionfit.data.registry import DataSplits, SplitShares, load_data
from visionfit.data.scan import find_bad_images_once, screen_images
from visionfit.data.transforms import Preprocess
from visionfit.distributed import (
    broadcast_from_main,
    convert_sync_batchnorm,
    end_processes,
    init_processes,
    lost_contact_message,
    main_first,
    quiet_unless_main,
    wrap_model,
)
from visionfit.engine.balance import describe_class_weights, loss_class_weights
from visionfit.engine.batches import RunData, create_batches
from visionfit.engine.checkpointing import RunCheckpoints, has_weights
from visionfit.engine.ema import WeightAverage
from visionfit.engine.epochs import TrainingRun, fit
from visionfit.engine.events import open_events
from visionfit.engine.features import frozen_features
from visionfit.engine.loops import Evaluation, NonFiniteLossError
from visionfit.engine.multilabel import check_multilabel_run
from visionfit.engine.optim import create_optimization
from visionfit.engine.preemption import catching_stop_signals, stop_with_parent
from visionfit.engine.resume import ResumePlan, find_run, plan_run
from visionfit.engine.run_folder import create_run_folder, read_history, start_run_folder, write_status
from visionfit.engine.run_lock import lock_for_run
from visionfit.engine.state import TrainState
from visionfit.errors import TrainingStopped, UserError
from visionfit.finishing import TrainResult, finish
from visionfit.models import ModelRecord, StartingWeights, create_training_model, get_model_spec, record_of
from visionfit.models.custom import class_reference, is_custom_reference, load_class
from visionfit.models.freezing import backbone_frozen, set_backbone_frozen
from visionfit.models.record import remember_record
from visionfit.runtime import Runtime, configure_determinism, create_runtime, seed_everything, unwrap_model

IMAGE_GRID_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model as `config` says and return where the run went and how it did.

    Keyword arguments override single config fields: `train(epochs=3, model="cifar10-quick")`.
    `model` may also be an `nn.Module` instance, trained as it is (its output must have one logit
    per class); load its checkpoints with `load_model(path, model=a_fresh_instance)`.
    `resume=RUN_DIR` continues that run from its last checkpoint, exactly where it stopped;
    `resume="auto"` continues the newest unfinished run with the same config, or starts one.
    `on_epoch(record)` sees each epoch's record (`visionfit tune` reports it, and may end the run).
    """
    setup_logging()  # before the plan: building the config may say which defaults the data chose
    instance = overrides.pop("model") if isinstance(overrides.get("model"), nn.Module) else None
    if instance is not None:
        overrides["model"] = class_reference(instance)
    return run_training(plan_run(config, resume, overrides), instance, on_epoch)


def run_training(
    plan: ResumePlan,
    instance: nn.Module | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train as a finished plan says (`engine.resume.plan_run`: its config validated, the config of
    the run it continues read): nothing here checks the options again. `instance`: the user's own
    `nn.Module` the config's model names; `on_epoch` as in `train`."""
    setup_logging()
    started, plan, lock = join_processes(plan)
    runtime = create_runtime(plan.config.device, plan.config.precision, plan.config.channels_last)
    configure_determinism(plan.config.deterministic)
    config, data, skipped = load_training_data(plan.config)
    epoch_data = data.for_epochs()  # with a validation split, the epochs never see the test split
    preprocess = resolve_preprocess(config, data.image_side, instance)
    data_path = check_run_setup(config, runtime, epoch_data, preprocess)
    seed_everything(config.seed)
    model = build_training_model(config, runtime, data, preprocess, instance, plan)
    run_data = RunData(config, runtime, epoch_data, preprocess, data_path, logger.info)
    batches, test_batches = create_batches(run_data)
    optimization = create_optimization(
        model, config, runtime, len(data.classes), batches.batches_per_epoch(), class_weights(config, data)
    )
    run_dir = plan.folder or broadcast_from_main(lambda: new_run_folder(config, data, model))
    lock = lock or lock_for_run(run_dir)
    checkpoints = run_checkpoints(config, run_dir, model, data, preprocess)
    ema = WeightAverage(model, config.ema) if config.ema else None  # a copy of the weights to average
    state = checkpoints.restore(model, optimization, ema) if plan.folder else TrainState()
    model = ready_to_train(config, model, len(data.classes), runtime, state.epoch)  # after restoring weights
    if runtime.is_main:  # only rank 0 writes the run folder
        start_run_folder(config, run_dir, data, runtime.world_size, skipped, resumed=plan.folder is not None)
    history = broadcast_from_main(lambda: read_history(run_dir, state.epoch - 1))
    events = open_events(
        run_dir, config.tensorboard, runtime.is_main, plan.folder is not None, state.global_step
    )
    features = frozen_features(unwrap_model(model), run_data)
    parts = (epoch_data, preprocess, model, batches, test_batches, optimization)
    run = TrainingRun(config, runtime, *parts, checkpoints, events, ema, features)
    announce(run, plan, state, data_path)
    with catching_stop_signals():  # SIGTERM, SIGINT, SIGUSR1: save after the current step, then stop
        result = finish(run, state, history, guarded_fit(run, state, history, on_epoch), data)
    end_processes(started)
    lock.release()
    return result


def join_processes(plan: ResumePlan) -> tuple[Any, ResumePlan, Any]:
    """Under torchrun, join the other processes (each dies with its agent instead of training on as
    an orphan); the run to continue, found by rank 0 alone so that every rank continues the same
    one; and that run folder's lock, taken before anything in it is touched."""
    started = init_processes(plan.config.dist_timeout)
    stop_with_parent()
    quiet_unless_main()
    plan = broadcast_from_main(lambda: find_run(plan))
    lock = lock_for_run(plan.folder) if plan.folder else None
    return started, plan, lock


def new_run_folder(config: TrainConfig, data: DataSplits, model: nn.Module) -> Path:
    """A new run's folder, named after the data and the model."""
    return create_run_folder(
        config.run_dir, config.name, dataset=data.dataset, model=record_of(model).display_name
    )


def load_training_data(config: TrainConfig) -> tuple[TrainConfig, DataSplits, list[tuple[Path, str]]]:
    """The dataset (rank 0 downloads or unpacks first; the others then read its copy), its files
    decode-checked, and the config with the dataset it resolved to."""
    data = main_first(
        lambda: load_data(
            config.dataset,
            config.data_dir,
            shares=SplitShares(config.test_fraction, config.val_fraction, config.seed),
            label_file=label_file_options(vars(config)),
        )
    )
    config = apply_overrides(config, {"dataset": data.dataset, "task": data.task}, "resolved dataset")
    if data.task == "multilabel":
        check_multilabel_run(config)
    excluded: list[tuple[Path, str]] = []
    if config.exclude:  # before the decode check: a broken file doctor listed is left out, not an error
        data, excluded = exclude_files(data, config.exclude)
        kinds = summarize_exclusions(excluded)
        logger.info(f"leaving out {len(excluded)} file(s) listed in {config.exclude}: {kinds}")
    # One process decodes every file, and all agree on what it found.
    data, skipped = screen_images(
        data,
        config.bad_images,
        logger.warning,
        check=lambda files: broadcast_from_main(lambda: find_bad_images_once(files)),
    )
    skipped = excluded + skipped
    if not config.shuffle and data.train.in_class_order:
        logger.warning(
            "warning: --no-shuffle on a folder dataset trains on its classes one after "
            "another (files are in class order), which ruins accuracy; add --shuffle"
        )
    return config, data, skipped


def resolve_preprocess(
    config: TrainConfig, image_side: int | None = None, model: nn.Module | None = None
) -> Preprocess:
    """The model's own input size and normalisation (torchvision models: their pretrained
    weights' resize, crop, mean, std and interpolation) unless the config overrides them (--resize:
    how a picture becomes the square; the model's centre crop when not given).

    A user's own model may say what it expects with class attributes `input_size`, `mean` and
    `std`; otherwise it gets the dataset's image side (or 224) and ImageNet's statistics."""
    if model is not None or is_custom_reference(config.model):
        source = model if model is not None else load_class(config.model)
        side = getattr(source, "input_size", None) or image_side or 224
        return Preprocess(
            input_size=config.input_size or side,
            mean=config.mean or tuple(getattr(source, "mean", IMAGENET_MEAN)),
            std=config.std or tuple(getattr(source, "std", IMAGENET_STD)),
            resize_mode=config.resize or "crop",
        )
    spec = get_model_spec(config.model)
    preprocess = Preprocess.for_model(spec, input_size=config.input_size, mean=config.mean, std=config.std)
    return dataclasses.replace(preprocess, resize_mode=config.resize) if config.resize else preprocess


def class_weights(config: TrainConfig, data: DataSplits) -> torch.Tensor | None:
    """--class-weights' loss weight of each class, said in one line (None without it)."""
    weights = loss_class_weights(config.class_weights, data.train.label_tensor(), data.classes)
    if weights is not None and config.class_weights is not None:
        logger.info(describe_class_weights(config.class_weights, weights, data.classes))
    return weights


def check_run_setup(config: TrainConfig, runtime: Runtime, data: DataSplits, preprocess: Preprocess) -> str:
    """The data path ("memory" or "loader"), once every check that needs the device, the process
    count and the input size passed."""
    data_path = choose_data_path(config.data_path, data.train, data.test, preprocess)
    check_setup(
        config,
        device_type=runtime.device.type,
        world_size=runtime.world_size,
        input_size=preprocess.input_size,
        validation=data.validation,
    )
    return data_path


def build_training_model(
    config: TrainConfig,
    runtime: Runtime,
    data: DataSplits,
    preprocess: Preprocess,
    instance: nn.Module | None,
    plan: ResumePlan,
) -> nn.Module:
    """The network to train, on the device: the given instance, or built from the config (a
    resumed run's weights come from its checkpoint: no download, no weights file needed)."""
    num_classes = len(data.classes)
    if instance is not None:
        model = remember_record(instance, ModelRecord(config.model, num_classes, source="instance"))
    else:
        model = create_training_model(
            config.model,
            num_classes,
            config.model_args,
            head=config.head,
            start=StartingWeights(
                config.pretrained, config.weights, load=plan.folder is None or not has_weights(plan.folder)
            ),
        )
    sides = {preprocess.input_size: "--input-size"}
    low_res = low_res_side(config, preprocess.input_size)
    if low_res is not None:
        sides[low_res] = "--low-res-size"
    check_model_fits(model, num_classes, config.model, sides)
    return runtime.prepare_model(convert_sync_batchnorm(model, config.sync_bn))


def check_model_fits(model: nn.Module, num_classes: int, name: str, sides: dict[int, str]) -> None:
    """Fail before training, in one line, when the model cannot take an input side it will get
    (`sides`: side → the flag that sets it) or has the wrong number of outputs (for example
    cifar10-quick at --input-size 64)."""
    was_training = model.training
    try:
        for side, flag in sides.items():
            try:
                with torch.no_grad():
                    output = model.eval()(torch.zeros(2, 3, side, side))
            except RuntimeError as error:
                raise UserError(
                    f"model {name} cannot take {side}x{side} input "
                    f"({str(error).splitlines()[0]}); use its own size or another {flag}"
                ) from None
            if tuple(output.shape) != (2, num_classes):
                raise UserError(
                    f"model {name} returns shape {tuple(output.shape[1:])} per image, "
                    f"expected ({num_classes},) for {num_classes} classes"
                )
    finally:
        model.train(was_training)


def ready_to_train(
    config: TrainConfig, model: nn.Module, num_classes: int, runtime: Runtime, epoch: int
) -> nn.Module:
    """The model as the loop trains it: frozen as --freeze says for `epoch` (before DDP wraps it:
    DDP syncs only the parameters that train when it is built), wrapped by DDP in a multi-process
    run, compiled with --compile."""
    if config.freeze != "none":
        set_backbone_frozen(model, num_classes, backbone_frozen(config.freeze, config.unfreeze_at, epoch))
    model = wrap_model(model, runtime.device)
    return torch.compile(model) if config.compile else model


def run_checkpoints(
    config: TrainConfig, run_dir: Path, model: nn.Module, data: DataSplits, preprocess: Preprocess
) -> RunCheckpoints:
    return RunCheckpoints(
        run_dir / "checkpoints",
        record_of(model),
        data.classes,
        preprocess,
        config.to_dict(),
        {
            "train": len(data.train),
            "test": len(data.test),
            **({"val": len(data.val)} if data.val is not None else {}),
        },
        every_steps=config.checkpoint_every_steps,
        every_minutes=config.checkpoint_every_minutes,
        keep_every_epoch=config.keep_every_epoch,
    )


def data_sizes(data: DataSplits) -> dict[str, int]:
    """The split sizes a checkpoint records (a resumed run checks them): val only when there is one."""
    sizes = {"train": len(data.train), "test": len(data.test)}
    if data.val is not None:
        sizes["val"] = len(data.val)
    return sizes


def announce(run: TrainingRun, plan: ResumePlan, state: TrainState, data_path: str) -> None:
    config, runtime = run.config, run.runtime
    parameters = sum(parameter.numel() for parameter in run.plain_model.parameters())
    layout = ", channels_last" if runtime.channels_last else ""
    logger.info(f"data: {run.data.description}")
    logger.info(
        f"model: {config.model} ({parameters:,} parameters) on {runtime.device} ({runtime.precision}{layout}"
        f"{', compiled' if config.compile else ''}, {data_path} data path); "
        f"run folder: {run.checkpoints.folder.parent}"
    )
    if runtime.distributed:
        logger.info(
            f"{runtime.world_size} processes; global batch {config.batch_size} "
            f"({config.batch_size // runtime.world_size} per process)"
        )
    if plan.folder is not None:
        logger.info(f"resuming at epoch {state.epoch}, batch {state.batch} (step {state.global_step})")
    if not run.data.validation and config.test_every < config.epochs:  # one test pass chooses nothing
        logger.info(
            "no validation split: best is chosen on the test split, which then measures a choice made "
            "on it (--val-fraction 0.1, or train/, val/ and test/ folders, keep the test split for the end)"
        )


def log_examples(run: TrainingRun) -> None:
    """A grid of augmented training images and the model graph, for TensorBoard."""
    config, preprocess = run.config, run.preprocess
    images = preview(
        run.data.train, preprocess, augment=config.augment, seed=config.seed, count=IMAGE_GRID_SIZE
    )
    run.events.images("train/images", images, 0)
    example = run.batches.normalize(images[:1].to(run.runtime.device) * 255)
    run.events.graph(run.plain_model, example)


def guarded_fit(
    run: TrainingRun,
    state: TrainState,
    history: list[dict[str, Any]],
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Evaluation | None:
    """`epochs.fit`, with the run marked failed or interrupted when it stops early, and the one-line
    errors for a non-finite loss and a lost process."""
    run_dir = run.checkpoints.folder.parent
    try:
        if state.global_step == 0 and run.runtime.is_main:
            log_examples(run)
        return fit(run, state, history, on_epoch)
    except NonFiniteLossError as error:
        if run.runtime.is_main:
            write_status(run_dir, status="failed", reason=f"non-finite loss at step {state.global_step + 1}")
        run.events.close()
        kept = (
            f"the last good checkpoint {run.checkpoints.last} is intact"
            if run.checkpoints.last.is_file()
            else ("no checkpoint was written yet")
        )
        raise UserError(
            f"training stopped at step {state.global_step + 1} "
            f"(epoch {state.epoch}, batch {state.batch + 1}): "
            f"{error.what}; {kept}; resume with `visionfit train --resume {run_dir} --clip-grad-norm 1` "
            "or `--on-nan skip`, or start again with a lower --lr"
        ) from None
    except BaseException as error:
        if run.runtime.is_main:
            interrupted = isinstance(error, (KeyboardInterrupt, TrainingStopped))
            write_status(run_dir, status="interrupted" if interrupted else "failed")
        run.events.close()
        lost = lost_contact_message(error, run_dir, run.config.dist_timeout)
        if lost is not None:
            raise UserError(lost) from None
        raise
