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

from visionfit.config import TrainConfig, apply_overrides, save_config, validate
from visionfit.console import EpochProgress, logger, setup_logging
from visionfit.data import DataSplits, FileSamples, load_data
from visionfit.data.loaders import (
    SampleDataset,
    build_eval_loader,
    build_train_loader,
    default_workers,
    sample_seed,
)
from visionfit.data.transforms import Preprocess, build_eval_transform, build_train_transform
from visionfit.engine.checkpoint import save_checkpoint
from visionfit.engine.events import RunEvents
from visionfit.engine.loops import evaluate, train_steps
from visionfit.engine.metrics import format_report
from visionfit.engine.optim import create_optimizer, create_scheduler
from visionfit.engine.run_folder import create_run_folder, write_status
from visionfit.errors import UserError
from visionfit.models import create_model, get_model_spec
from visionfit.runtime import Runtime, create_runtime, seed_everything
from visionfit.serialization import checkpoint_metadata, unwrap_model

IMAGE_GRID_SIZE = 32


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
        return self.run_dir / "checkpoints" / "last.safetensors"

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1]


def resolve_preprocess(config: TrainConfig) -> Preprocess:
    """The model's own input size and normalisation unless the config overrides them."""
    spec = get_model_spec(config.model)
    return Preprocess(
        input_size=config.input_size or spec.input_size,
        mean=config.mean or spec.mean,
        std=config.std or spec.std,
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


def _log_examples(
    events: RunEvents,
    model: nn.Module,
    data: DataSplits,
    preprocess: Preprocess,
    config: TrainConfig,
    runtime: Runtime,
) -> None:
    """A grid of augmented training images and the model graph, for TensorBoard."""
    dataset = SampleDataset(data.train, build_train_transform(preprocess, config.augment))
    count = min(IMAGE_GRID_SIZE, len(dataset))
    images = torch.stack([dataset[(index, sample_seed(config.seed, 0, index))][0] for index in range(count)])
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    events.images("train/images", images * std + mean, 0)
    events.graph(model, runtime.to_device(images[:1]))


def train(config: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Train a model as `config` says and return where the run went and how it did.

    Keyword arguments override single config fields: `train(epochs=3, model="cifar10-quick")`.
    """
    config = apply_overrides(config or TrainConfig(), overrides, "train() arguments")
    validate(config)
    setup_logging()
    runtime = create_runtime(config.device, config.precision)
    data = load_data(
        config.dataset,
        config.data_dir,
        val_fraction=config.val_fraction,
        seed=config.seed,
        notify=logger.info,
    )
    config = apply_overrides(config, {"dataset": data.dataset}, "resolved dataset")
    if not config.shuffle and isinstance(data.train, FileSamples):
        logger.warning(
            "warning: --no-shuffle on a folder dataset trains on its classes one after "
            "another (files are in class order), which ruins accuracy; add --shuffle"
        )
    preprocess = resolve_preprocess(config)
    num_classes = len(data.classes)

    seed_everything(config.seed)
    model = create_model(config.model, num_classes, **config.model_args)
    check_model_fits(model, preprocess, num_classes, config.model)
    model.to(runtime.device)

    workers = config.workers if config.workers is not None else default_workers(runtime.device, data.train)
    train_loader, sampler = build_train_loader(
        data.train,
        build_train_transform(preprocess, config.augment),
        batch_size=config.batch_size,
        shuffle=config.shuffle,
        seed=config.seed,
        workers=workers,
        device=runtime.device,
        drop_last=config.drop_last,
    )
    test_loader = build_eval_loader(
        data.test,
        build_eval_transform(preprocess),
        batch_size=config.test_batch_size,
        workers=workers,
        device=runtime.device,
    )
    steps_per_epoch = sampler.batches_per_epoch()
    optimizer = create_optimizer(model, config)
    scheduler = create_scheduler(optimizer, config, steps_per_epoch)
    scaler = runtime.grad_scaler()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    run_dir = create_run_folder(config.run_dir, config.name, dataset=data.dataset, model=config.model)
    save_config(config, run_dir / "config.yaml")
    write_status(
        run_dir,
        status="running",
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        classes=data.classes,
        dataset=data.description,
    )
    events = RunEvents(run_dir, tensorboard=config.tensorboard)
    logger.info(f"data: {data.description}")
    logger.info(
        f"model: {config.model} ({sum(p.numel() for p in model.parameters()):,} parameters)"
        f" on {runtime.device} ({runtime.precision}); run folder: {run_dir}"
    )
    try:
        _log_examples(events, model, data, preprocess, config, runtime)
        history = _fit(
            config,
            runtime,
            model,
            train_loader,
            sampler,
            test_loader,
            optimizer,
            scheduler,
            scaler,
            loss_fn,
            events,
            data.classes,
            preprocess,
            run_dir,
        )
    except BaseException as error:
        write_status(run_dir, status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        events.close()
        raise
    best_epoch = max(history, key=lambda record: (record["test"]["accuracy"], -record["epoch"]))["epoch"]
    best = history[best_epoch - 1]
    events.hparams(
        {key: value for key, value in config.to_dict().items() if key not in ("run_dir", "name")},
        {
            "hparam/test_accuracy": best["test"]["accuracy"],
            "hparam/test_loss": best["test"]["loss"],
            "hparam/best_epoch": float(best_epoch),
        },
    )
    events.close()
    write_status(
        run_dir,
        status="finished",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        best_epoch=best_epoch,
        best_accuracy=best["test"]["accuracy"],
    )
    logger.info(format_report(history[-1]["test"], data.classes))
    logger.info(
        f"best test accuracy {best['test']['accuracy']:.2%} at epoch {best_epoch}; "
        f"checkpoints in {run_dir / 'checkpoints'}; view curves with: tensorboard --logdir "
        f"{Path(config.run_dir)}"
    )
    return TrainResult(run_dir, data.classes, history, best_epoch)


def _fit(
    config: TrainConfig,
    runtime: Runtime,
    model: nn.Module,
    train_loader: Any,
    sampler: Any,
    test_loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    loss_fn: nn.Module,
    events: RunEvents,
    classes: list[str],
    preprocess: Preprocess,
    run_dir: Path,
) -> list[dict[str, Any]]:
    """The epoch loop: train, evaluate, record, checkpoint."""
    history: list[dict[str, Any]] = []
    best_accuracy = -1.0
    global_step = 0
    for epoch in range(1, config.epochs + 1):
        sampler.set_epoch(epoch)
        progress = EpochProgress(len(sampler), f"epoch {epoch}/{config.epochs}")
        loss_sum = torch.zeros((), device=runtime.device)
        seen = 0
        started = time.perf_counter()
        for output in train_steps(model, train_loader, loss_fn, optimizer, scheduler, scaler, runtime):
            global_step += 1
            loss_sum += output.loss * output.batch_size
            seen += output.batch_size
            if config.log_every and global_step % config.log_every == 0:
                loss, lr = output.loss.item(), optimizer.param_groups[0]["lr"]
                events.scalar("train/loss", loss, global_step)
                events.scalar("train/lr", lr, global_step)
                progress.line(
                    f"epoch {epoch}/{config.epochs}  step {global_step}  loss {loss:.4f}  lr {lr:.4g}"
                )
            running = (loss_sum / seen).item() if progress.wants_postfix() else None
            progress.advance(output.batch_size, running)
        progress.close()
        train_seconds = time.perf_counter() - started
        report = evaluate(model, test_loader, runtime, len(classes)).report(classes)
        record = {
            "epoch": epoch,
            "step": global_step,
            "train_loss": (loss_sum / seen).item(),
            "lr": optimizer.param_groups[0]["lr"],
            "train_seconds": train_seconds,
            "train_images_per_second": seen / train_seconds,
            "test_seconds": time.perf_counter() - started - train_seconds,
            "test": report,
        }
        history.append(record)
        events.epoch(record)
        is_best = report["accuracy"] > best_accuracy
        best_accuracy = max(best_accuracy, report["accuracy"])
        _save_checkpoints(run_dir, model, config, classes, preprocess, record, is_best)
        logger.info(
            f"epoch {epoch}/{config.epochs}  train loss {record['train_loss']:.4f}  "
            f"test loss {report['loss']:.4f}  test acc {report['accuracy']:.2%}  "
            f"macro F1 {report['macro']['f1']:.3f}  ({train_seconds:.1f} s, "
            f"{record['train_images_per_second']:,.0f} img/s){'  *best' if is_best else ''}"
        )
    return history


def _save_checkpoints(
    run_dir: Path,
    model: nn.Module,
    config: TrainConfig,
    classes: list[str],
    preprocess: Preprocess,
    record: dict[str, Any],
    is_best: bool,
) -> None:
    test = record["test"]
    metadata = checkpoint_metadata(
        model_name=config.model,
        model_args=config.model_args,
        classes=classes,
        preprocess=preprocess,
        epoch=record["epoch"],
        step=record["step"],
        metrics={
            "train_loss": record["train_loss"],
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "test_top5_accuracy": test["top5_accuracy"],
            "test_macro_f1": test["macro"]["f1"],
        },
        config=config.to_dict(),
    )
    state = unwrap_model(model).state_dict()
    folder = run_dir / "checkpoints"
    save_checkpoint(folder / "last.safetensors", state, metadata)
    if is_best:
        save_checkpoint(folder / "best.safetensors", state, metadata)
    if config.keep_every_epoch:
        save_checkpoint(folder / f"epoch_{record['epoch']:03d}.safetensors", state, metadata)
