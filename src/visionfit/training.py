"""`train(config)`: data → model → loop → metrics → logs and checkpoints, in that order.

The module is `training`, not `train`, so that `visionfit.train` stays the function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.config import TrainConfig, apply_overrides, build_config, save_config, validate
from visionfit.console import EpochProgress, logger, setup_logging
from visionfit.data import DataSplits, FileSamples, load_data
from visionfit.data.loaders import (
    SampleDataset,
    build_eval_loader,
    build_train_loader,
    default_workers,
    sample_seed,
)
from visionfit.data.memory import build_memory_loaders, choose_data_path
from visionfit.data.scan import find_bad_images, without
from visionfit.data.transforms import Preprocess, build_eval_transform, build_train_transform
from visionfit.distributed import (
    any_rank,
    barrier,
    broadcast_from_main,
    check_process_options,
    convert_sync_batchnorm,
    count_across,
    end_processes,
    init_processes,
    local_world_size,
    lost_contact_message,
    main_first,
    quiet_unless_main,
    reduce_metric_sums,
    restart_resume,
    sum_across,
    wrap_model,
)
from visionfit.engine.checkpoint import Checkpoint, load_checkpoint_or_previous, save_checkpoint
from visionfit.engine.events import NoEvents, RunEvents
from visionfit.engine.loops import NonFiniteLossError, evaluate, train_steps
from visionfit.engine.metrics import format_report
from visionfit.engine.optim import create_optimizer, create_scheduler
from visionfit.engine.run_folder import (
    RESUMABLE_CHANGES,
    check_resume_changes,
    create_run_folder,
    find_resumable_run,
    load_run_config,
    read_history,
    read_status,
    write_status,
)
from visionfit.engine.state import TrainState, capture_training_state, restore_training_state
from visionfit.errors import UserError
from visionfit.models import ModelRecord, create_training_model, get_model_spec, record_of
from visionfit.models.custom import class_reference, is_custom_reference, load_class
from visionfit.models.freezing import backbone_frozen, parameter_groups, set_backbone_frozen
from visionfit.models.record import remember_record
from visionfit.runtime import Runtime, configure_determinism, create_runtime, seed_everything
from visionfit.serialization import checkpoint_metadata, unwrap_model

IMAGE_GRID_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAST = "last.safetensors"


@dataclass
class TrainResult:
    """What a finished run produced: where it is, its per-epoch records and its best epoch."""

    run_dir: Path
    classes: list[str]
    history: list[dict[str, Any]]
    best_epoch: int

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.safetensors"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / LAST

    @property
    def best(self) -> dict[str, Any]:
        return next(record for record in self.history if record["epoch"] == self.best_epoch)


@dataclass
class Session:
    """Everything one run trains with, built once by `train` and read by the epoch loop."""

    config: TrainConfig
    runtime: Runtime
    data: DataSplits
    preprocess: Preprocess
    model: nn.Module
    train_loader: Any
    sampler: Any  # EpochBatchSampler or MemoryBatches: set_epoch(epoch, start_batch), batches_per_epoch()
    test_loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    run_dir: Path
    events: RunEvents

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"


def resolve_preprocess(
    config: TrainConfig, image_side: int | None = None, model: nn.Module | None = None
) -> Preprocess:
    """The model's own input size and normalisation (torchvision models: their pretrained
    weights' resize, crop, mean, std and interpolation) unless the config overrides them.

    A user's own model may say what it expects with class attributes `input_size`, `mean` and
    `std`; otherwise it gets the dataset's image side (or 224) and ImageNet's statistics."""
    if model is not None or is_custom_reference(config.model):
        source = model if model is not None else load_class(config.model)
        side = getattr(source, "input_size", None) or image_side or 224
        return Preprocess(
            input_size=config.input_size or side,
            mean=config.mean or tuple(getattr(source, "mean", IMAGENET_MEAN)),
            std=config.std or tuple(getattr(source, "std", IMAGENET_STD)),
        )
    spec = get_model_spec(config.model)
    return Preprocess(
        input_size=config.input_size or spec.input_size,
        mean=config.mean or spec.mean,
        std=config.std or spec.std,
        crop_fraction=spec.crop_fraction,
        interpolation=spec.interpolation,
    )


def check_model_fits(model: nn.Module, preprocess: Preprocess, num_classes: int, name: str) -> None:
    """Fail before training, in one line, when the model cannot take the input or has the wrong
    number of outputs (for example cifar10-quick at --input-size 64)."""
    side = preprocess.input_size
    was_training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros(2, 3, side, side))
    except RuntimeError as error:
        raise UserError(
            f"model {name} cannot take {side}x{side} input "
            f"({str(error).splitlines()[0]}); use its own size or another --input-size"
        ) from None
    finally:
        model.train(was_training)
    if tuple(output.shape) != (2, num_classes):
        raise UserError(
            f"model {name} returns shape {tuple(output.shape[1:])} per image, "
            f"expected ({num_classes},) for {num_classes} classes"
        )


def _screen_images(data: DataSplits, policy: str) -> tuple[DataSplits, list[tuple[Path, str]]]:
    """Decode-check every image file before training; stop with the list, or leave them out."""
    if not isinstance(data.train, FileSamples) or not isinstance(data.test, FileSamples):
        return data, []
    files = data.train.paths + data.test.paths
    bad = broadcast_from_main(lambda: find_bad_images(files))  # one process decodes, all agree
    if not bad:
        return data, []
    if policy == "error":
        shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(
            f"{len(bad)} unreadable image file(s): {shown}{more}; "
            "fix or remove them, or pass --bad-images skip to leave them out"
        )
    paths = {path for path, _ in bad}
    logger.warning(f"warning: leaving out {len(bad)} unreadable image file(s) (--bad-images skip)")
    screened = DataSplits(
        data.dataset, data.classes, without(data.train, paths), without(data.test, paths), data.description
    )
    return screened, bad


def _requested_config(config: TrainConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    """`config` with `overrides`; without a config, built as the CLI builds it, so that a `recipe=`
    argument (or CIFAR-sized data without a model) brings the recipe's defaults."""
    if config is None:
        return build_config(flag_values=overrides, flags_name="train() arguments")
    config = apply_overrides(config, overrides, "train() arguments")
    validate(config)
    return config


def _resolve_resume(
    config: TrainConfig | None, resume: str | Path | None, overrides: dict[str, Any]
) -> tuple[TrainConfig, Path | None]:
    """The config to train with and, when resuming, the run folder to continue."""
    if resume is None or str(resume) == "auto":
        config = _requested_config(config, overrides)
        if resume is None:
            return config, None
        folder = find_resumable_run(config.run_dir, config)
        if folder is None:
            logger.info(f"no unfinished run with this config in {config.run_dir}: starting a new one")
        else:
            saved = load_run_config(folder)
            config = apply_overrides(
                saved, {key: getattr(config, key) for key in RESUMABLE_CHANGES}, "resume"
            )
        return config, folder
    folder = Path(resume).expanduser()
    saved = load_run_config(folder)
    if read_status(folder).get("status") == "finished":
        raise UserError(f"run {folder} already finished; nothing to resume (start a new run with --name)")
    config = apply_overrides(config or saved, overrides, "train() arguments")
    validate(config)
    check_resume_changes(folder, saved, config)
    return config, folder


def train(
    config: TrainConfig | None = None, *, resume: str | Path | None = None, **overrides: Any
) -> TrainResult:
    """Train a model as `config` says and return where the run went and how it did.

    Keyword arguments override single config fields: `train(epochs=3, model="cifar10-quick")`.
    `model` may also be an `nn.Module` instance, trained as it is (its output must have one logit
    per class); load its checkpoints with `load_model(path, model=a_fresh_instance)`.
    `resume=RUN_DIR` continues that run from its last checkpoint, exactly where it stopped;
    `resume="auto"` continues the newest unfinished run with the same config, or starts one.
    """
    setup_logging()
    instance = overrides.pop("model") if isinstance(overrides.get("model"), nn.Module) else None
    if instance is not None:
        overrides["model"] = class_reference(instance)
    requested = _requested_config(config, overrides)
    started = init_processes(requested.dist_timeout)  # under torchrun: join the other processes
    quiet_unless_main()
    resume = restart_resume(resume, requested)
    # Rank 0 alone looks for the run to resume, so that every rank continues the same one.
    config, resume_folder = broadcast_from_main(lambda: _resolve_resume(config, resume, overrides))
    runtime = create_runtime(config.device, config.precision, config.channels_last)
    check_process_options(config.batch_size, config.sync_bn, runtime)
    if runtime.distributed and config.unfreeze_at:
        raise UserError(
            "--unfreeze-at cannot change which parameters train in a multi-process run "
            "(DistributedDataParallel fixes them at the start); train the frozen and unfrozen "
            "phases as two runs, the second with --weights from the first"
        )
    configure_determinism(config.deterministic)
    data = main_first(  # rank 0 downloads or unpacks first; the others then read its copy
        lambda: load_data(
            config.dataset,
            config.data_dir,
            val_fraction=config.val_fraction,
            seed=config.seed,
            notify=logger.info,
        )
    )
    config = apply_overrides(config, {"dataset": data.dataset}, "resolved dataset")
    data, skipped = _screen_images(data, config.bad_images)
    if not config.shuffle and isinstance(data.train, FileSamples):
        logger.warning(
            "warning: --no-shuffle on a folder dataset trains on its classes one after "
            "another (files are in class order), which ruins accuracy; add --shuffle"
        )
    preprocess = resolve_preprocess(config, data.image_side, instance)
    num_classes = len(data.classes)

    seed_everything(config.seed)
    model = instance or create_training_model(
        config.model,
        num_classes,
        config.model_args,
        head=config.head,
        pretrained=config.pretrained,
        weights=config.weights,
        # a resumed run's weights come from its checkpoint: no download, no weights file needed
        load_weights=resume_folder is None or not (resume_folder / "checkpoints" / LAST).is_file(),
    )
    if instance is not None:
        remember_record(instance, ModelRecord(config.model, num_classes, source="instance"))
    check_model_fits(model, preprocess, num_classes, config.model)
    model = convert_sync_batchnorm(model, config.sync_bn)
    model = runtime.prepare_model(model)

    train_loader, sampler, test_loader = _create_loaders(config, runtime, data, preprocess)
    groups = None
    if config.freeze != "none" or config.backbone_lr_scale != 1.0:
        groups = parameter_groups(model, num_classes, config.lr, config.backbone_lr_scale)
    optimizer = create_optimizer(model, config, groups)
    scheduler = create_scheduler(optimizer, config, sampler.batches_per_epoch())
    scaler = runtime.grad_scaler()

    state = TrainState()
    if resume_folder is None:
        run_dir = broadcast_from_main(
            lambda: create_run_folder(
                config.run_dir, config.name, dataset=data.dataset, model=record_of(model).display_name
            )
        )
    else:
        run_dir = resume_folder
        state = _restore(run_dir, data, model, optimizer, scheduler, scaler)
    if config.freeze != "none":
        # Before DDP wraps the model: DDP syncs only the parameters that train when it is built.
        set_backbone_frozen(
            model, num_classes, backbone_frozen(config.freeze, config.unfreeze_at, state.epoch)
        )
    model = wrap_model(model, runtime)  # after restoring its weights
    if runtime.is_main:  # only rank 0 writes the run folder
        save_config(config, run_dir / "config.yaml")
        _record_skipped(run_dir, skipped)
        write_status(
            run_dir,
            status="running",
            **({"started": _now()} if resume_folder is None else {"resumed": _now()}),
            classes=data.classes,
            dataset=data.description,
            processes=runtime.world_size,
        )
    history = broadcast_from_main(lambda: read_history(run_dir, state.epoch - 1))
    # On resume, TensorBoard drops whatever the killed process logged after the checkpoint.
    purge_step = None if resume_folder is None else state.global_step + 1 if state.global_step else 0
    events = (
        RunEvents(run_dir, tensorboard=config.tensorboard, purge_step=purge_step)
        if runtime.is_main
        else NoEvents()
    )
    session = Session(
        config,
        runtime,
        data,
        preprocess,
        torch.compile(model) if config.compile else model,
        train_loader,
        sampler,
        test_loader,
        optimizer,
        scheduler,
        scaler,
        nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        run_dir,
        events,
    )
    logger.info(f"data: {data.description}")
    logger.info(
        f"model: {config.model} ({sum(p.numel() for p in model.parameters()):,} parameters)"
        f" on {runtime.device} ({runtime.precision}{', channels_last' if runtime.channels_last else ''}"
        f"{', compiled' if config.compile else ''}, {'memory' if train_loader is sampler else 'loader'}"
        f" data path); run folder: {run_dir}"
    )
    if runtime.distributed:
        logger.info(
            f"{runtime.world_size} processes; global batch {config.batch_size} "
            f"({config.batch_size // runtime.world_size} per process)"
        )
    if resume_folder is not None:
        logger.info(f"resuming at epoch {state.epoch}, batch {state.batch} (step {state.global_step})")
    try:
        if state.global_step == 0 and runtime.is_main:
            _log_examples(session)
        _fit(session, state, history)
    except NonFiniteLossError as error:
        if runtime.is_main:
            write_status(run_dir, status="failed", reason=f"non-finite loss at step {state.global_step + 1}")
        events.close()
        raise UserError(_nonfinite_message(session, state, error)) from None
    except BaseException as error:
        if runtime.is_main:
            write_status(run_dir, status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        events.close()
        lost = lost_contact_message(error, run_dir, config.dist_timeout)
        if lost is not None:
            raise UserError(lost) from None
        raise
    result = _finish(session, state, history)
    end_processes(started)
    return result


def _create_loaders(
    config: TrainConfig, runtime: Runtime, data: DataSplits, preprocess: Preprocess
) -> tuple[Any, Any, Any]:
    """Training batches, the sampler the epoch loop positions, and test batches: the in-memory
    path when the data fit (`--data-path`), otherwise per-sample DataLoaders."""
    if choose_data_path(config.data_path, data.train, data.test, preprocess) == "memory":
        low_res_size = (
            (config.low_res_size or preprocess.input_size * 3 // 4) if config.low_res_epochs else None
        )
        if low_res_size is not None and low_res_size >= preprocess.input_size:
            raise UserError(
                f"--low-res-size {low_res_size} must be smaller than the input size {preprocess.input_size}"
            )
        train_batches, test_batches = build_memory_loaders(
            data.train,
            data.test,
            preprocess,
            batch_size=config.batch_size,
            test_batch_size=config.test_batch_size,
            shuffle=config.shuffle,
            seed=config.seed,
            drop_last=config.drop_last,
            augment=config.augment,
            device=runtime.device,
            channels_last=runtime.channels_last,
            notify=logger.info,
            rank=runtime.rank,
            world_size=runtime.world_size,
            low_res_size=low_res_size,
            low_res_epochs=config.low_res_epochs,
        )
        return train_batches, train_batches, test_batches
    if config.low_res_epochs:
        raise UserError(
            "--low-res-epochs needs the memory data path (--data-path auto or memory, for pictures of "
            "at most 64 px that fit in 2 GiB); drop --low-res-epochs to use the loader path"
        )
    workers = config.workers
    if workers is None:
        workers = default_workers(runtime.device, data.train, local_world_size())
    train_loader, sampler = build_train_loader(
        data.train,
        build_train_transform(preprocess, config.augment),
        batch_size=config.batch_size,
        shuffle=config.shuffle,
        seed=config.seed,
        workers=workers,
        device=runtime.device,
        drop_last=config.drop_last,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    test_loader = build_eval_loader(
        data.test,
        build_eval_transform(preprocess),
        batch_size=max(1, config.test_batch_size // runtime.world_size),  # a global size too
        workers=workers,
        device=runtime.device,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    return train_loader, sampler, test_loader


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _record_skipped(run_dir: Path, skipped: list[tuple[Path, str]]) -> None:
    if skipped:
        lines = "".join(f"{path}\t{reason}\n" for path, reason in skipped)
        (run_dir / "skipped_images.txt").write_text(lines, encoding="utf-8")


def _restore(
    run_dir: Path,
    data: DataSplits,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Load the run's last checkpoint into the fresh model and optimizer; a run killed before its
    first checkpoint starts over in its own folder."""
    checkpoint = broadcast_from_main(lambda: _read_last(run_dir))  # rank 0 reads it for all
    if checkpoint is None:
        return TrainState()
    saved_data = checkpoint.metadata.get("data", {})
    current = {"classes": data.classes, "train": len(data.train), "test": len(data.test)}
    if saved_data and saved_data != current:
        raise UserError(
            f"the data changed since {run_dir} was checkpointed ({saved_data['train']} train / "
            f"{saved_data['test']} test images then, {current['train']} / {current['test']} now, or other "
            "classes); a resumed run needs the same data: start a new run"
        )
    model.load_state_dict(checkpoint.model_state)
    return restore_training_state(
        checkpoint.metadata["training"], checkpoint.extra_tensors, optimizer, scheduler, scaler
    )


def _read_last(run_dir: Path) -> Checkpoint | None:
    path = run_dir / "checkpoints" / LAST
    for leftover in path.parent.glob(".*.tmp"):  # torn writes of a process killed mid-save
        leftover.unlink(missing_ok=True)
    return load_checkpoint_or_previous(path) if path.is_file() else None


def _log_examples(session: Session) -> None:
    """A grid of augmented training images and the model graph, for TensorBoard."""
    config, preprocess = session.config, session.preprocess
    dataset = SampleDataset(session.data.train, build_train_transform(preprocess, config.augment))
    count = min(IMAGE_GRID_SIZE, len(dataset))
    images = torch.stack([dataset[(index, sample_seed(config.seed, 0, index))][0] for index in range(count)])
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    session.events.images("train/images", images * std + mean, 0)
    session.events.graph(unwrap_model(session.model), session.runtime.to_device(images[:1]))


def _fit(session: Session, state: TrainState, history: list[dict[str, Any]]) -> None:
    """The epoch loop from wherever `state` says: train, evaluate, record, checkpoint."""
    config, runtime, optimizer = session.config, session.runtime, session.optimizer
    steps_in_epoch = session.sampler.batches_per_epoch()
    last_save = time.monotonic()
    while state.epoch <= config.epochs:
        epoch = state.epoch
        if config.freeze != "none":  # a function of the epoch alone, so a resumed run gets it right
            set_backbone_frozen(
                unwrap_model(session.model),
                len(session.data.classes),
                backbone_frozen(config.freeze, config.unfreeze_at, epoch),
            )
            if epoch == config.unfreeze_at:
                logger.info(f"epoch {epoch}: unfreezing the backbone (--unfreeze-at {epoch})")
        session.sampler.set_epoch(epoch, start_batch=state.batch)
        progress = EpochProgress(
            steps_in_epoch, f"epoch {epoch}/{config.epochs}", enabled=None if runtime.is_main else False
        )
        progress.bar.update(state.batch)
        loss_sum = torch.tensor(state.epoch_loss_sum, dtype=torch.float32, device=runtime.device)
        started = time.perf_counter() - state.epoch_seconds
        steps = train_steps(
            session.model,
            session.train_loader,
            session.loss_fn,
            optimizer,
            session.scheduler,
            session.scaler,
            runtime,
            clip_grad_norm=config.clip_grad_norm,
            on_nonfinite=config.on_nan,
        )
        for output in steps:
            state.global_step += 1
            state.batch += 1
            if output.skipped:
                state.skipped_batches += 1
                progress.line(
                    f"epoch {epoch}/{config.epochs}  step {state.global_step}: skipped a batch "
                    f"whose loss is {output.loss.item()} (--on-nan skip)"
                )
            else:  # sums over all processes: every rank keeps the global numbers
                loss_sum += sum_across(output.loss * output.batch_size)
                state.epoch_samples += count_across(output.batch_size)
            if config.log_every and state.global_step % config.log_every == 0 and not output.skipped:
                loss = (sum_across(output.loss) / runtime.world_size).item()
                lr = optimizer.param_groups[0]["lr"]
                session.events.scalar("train/loss", loss, state.global_step)
                session.events.scalar("train/lr", lr, state.global_step)
                progress.line(
                    f"epoch {epoch}/{config.epochs}  step {state.global_step}  loss {loss:.4f}  lr {lr:.4g}"
                )
            running = (loss_sum / max(1, state.epoch_samples)).item() if progress.wants_postfix() else None
            progress.advance(output.batch_size * runtime.world_size, running)
            # The epoch's own checkpoint follows its last batch, after the evaluation.
            if state.batch < steps_in_epoch and _checkpoint_due(config, state, last_save):
                state.epoch_loss_sum = loss_sum.item()
                state.epoch_seconds = time.perf_counter() - started
                if runtime.is_main:
                    _save_last(session, state, None)
                last_save = time.monotonic()
        progress.close()
        train_seconds = time.perf_counter() - started
        report = None
        if epoch % config.test_every == 0 or epoch == config.epochs:
            # Each rank evaluates its share of the test set; the sums are added up over all ranks.
            sums = evaluate(
                unwrap_model(session.model),
                session.test_loader,
                runtime,
                len(session.data.classes),
                flip=config.test_time_flip,
                shift=config.test_time_shift,
            )
            report = reduce_metric_sums(sums).report(session.data.classes)
        record = {
            "epoch": epoch,
            "step": state.global_step,
            "train_loss": (loss_sum / max(1, state.epoch_samples)).item(),
            "lr": optimizer.param_groups[0]["lr"],
            "train_seconds": train_seconds,
            "train_images_per_second": state.epoch_samples / max(train_seconds, 1e-9),
            "test_seconds": time.perf_counter() - started - train_seconds,
            "skipped_batches": state.skipped_batches,
            "test": report,  # None in an epoch without a test (--test-every)
        }
        history.append(record)
        session.events.epoch(record)
        is_best = report is not None and report["accuracy"] > state.best_accuracy
        if is_best:
            state.best_accuracy, state.best_epoch = report["accuracy"], epoch
        state.finish_epoch()
        if runtime.is_main:
            _save_epoch_checkpoints(session, state, record, is_best)
        barrier()  # the other ranks wait for rank 0's checkpoint
        last_save = time.monotonic()
        tested = (
            f"test loss {report['loss']:.4f}  test acc {report['accuracy']:.2%}  "
            f"macro F1 {report['macro']['f1']:.3f}  "
            if report is not None
            else ""
        )
        logger.info(
            f"epoch {epoch}/{config.epochs}  train loss {record['train_loss']:.4f}  {tested}"
            f"({train_seconds:.1f} s, {record['train_images_per_second']:,.0f} img/s)"
            f"{'  *best' if is_best else ''}"
        )


def _checkpoint_due(config: TrainConfig, state: TrainState, last_save: float) -> bool:
    by_steps = config.checkpoint_every_steps and state.global_step % config.checkpoint_every_steps == 0
    if not config.checkpoint_every_minutes:
        return bool(by_steps)
    # Clocks differ between processes: all of them follow the one whose time is up first.
    return any_rank(bool(by_steps) or time.monotonic() - last_save >= 60 * config.checkpoint_every_minutes)


def _metadata(session: Session, state: TrainState, record: dict[str, Any] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "epoch": state.epoch - 1,
        "step": state.global_step,
        "config": session.config.to_dict(),
    }
    fields["data"] = {
        "classes": session.data.classes,
        "train": len(session.data.train),
        "test": len(session.data.test),
    }
    if record is not None:
        test = record["test"]
        fields["metrics"] = {"train_loss": record["train_loss"]}
        if test is not None:
            fields["metrics"].update(
                test_loss=test["loss"],
                test_accuracy=test["accuracy"],
                test_top5_accuracy=test["top5_accuracy"],
                test_macro_f1=test["macro"]["f1"],
            )
    return checkpoint_metadata(
        model_name=session.config.model,
        model_args=session.config.model_args,
        classes=session.data.classes,
        preprocess=session.preprocess,
        model_record=record_of(unwrap_model(session.model)),
        **fields,
    )


def _save_last(session: Session, state: TrainState, record: dict[str, Any] | None) -> None:
    """The resumable checkpoint: weights plus optimizer, scheduler, scaler, RNG and loop state.
    The one it replaces stays as last.prev, the fallback if this one is ever found damaged."""
    tensors, skeleton = capture_training_state(session.optimizer, session.scheduler, session.scaler, state)
    metadata = {**_metadata(session, state, record), "training": skeleton}
    state_dict = unwrap_model(session.model).state_dict()
    save_checkpoint(session.checkpoints / LAST, state_dict, metadata, tensors, keep_previous=True)


def _save_epoch_checkpoints(
    session: Session, state: TrainState, record: dict[str, Any], is_best: bool
) -> None:
    _save_last(session, state, record)
    state_dict = unwrap_model(session.model).state_dict()
    metadata = _metadata(session, state, record)
    if is_best:
        save_checkpoint(session.checkpoints / "best.safetensors", state_dict, metadata)
    if session.config.keep_every_epoch:
        save_checkpoint(
            session.checkpoints / f"epoch_{record['epoch']:03d}.safetensors", state_dict, metadata
        )


def _nonfinite_message(session: Session, state: TrainState, error: NonFiniteLossError) -> str:
    last = session.checkpoints / LAST
    kept = f"the last good checkpoint {last} is intact" if last.is_file() else "no checkpoint was written yet"
    return (
        f"training stopped at step {state.global_step + 1} (epoch {state.epoch}, batch {state.batch + 1}): "
        f"{error.what}; {kept}; resume with `visionfit train --resume {session.run_dir} --clip-grad-norm 1` "
        "or `--on-nan skip`, or start again with a lower --lr"
    )


def _finish(session: Session, state: TrainState, history: list[dict[str, Any]]) -> TrainResult:
    """Record the final summary (hparams, status) and print the last epoch's table."""
    config, run_dir = session.config, session.run_dir
    best = next(record for record in history if record["epoch"] == state.best_epoch)
    from visionfit.evaluation import write_training_plots

    write_training_plots(
        run_dir,
        history,
        session.model,
        session.test_loader,
        session.data.test,
        session.data.classes,
        session.preprocess,
        session.runtime,
        session.events.writer,
        state.global_step,
    )
    session.events.hparams(
        {key: value for key, value in config.to_dict().items() if key not in ("run_dir", "name")},
        {
            "hparam/test_accuracy": best["test"]["accuracy"],
            "hparam/test_loss": best["test"]["loss"],
            "hparam/best_epoch": float(state.best_epoch),
        },
        step=state.global_step,
    )
    session.events.close()
    if not session.runtime.is_main:
        return TrainResult(run_dir, session.data.classes, history, state.best_epoch)
    write_status(
        run_dir,
        status="finished",
        finished=_now(),
        best_epoch=state.best_epoch,
        best_accuracy=best["test"]["accuracy"],
    )
    logger.info(format_report(history[-1]["test"], session.data.classes))
    logger.info(
        f"best test accuracy {best['test']['accuracy']:.2%} at epoch {state.best_epoch}; "
        f"checkpoints in {session.checkpoints}; view curves with: tensorboard --logdir {Path(config.run_dir)}"
    )
    return TrainResult(run_dir, session.data.classes, history, state.best_epoch)
