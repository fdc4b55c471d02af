"""Which run a `train` call continues, and with which config: `--resume RUN_DIR`, `--resume auto`,
or a restart by torchrun (`--max-restarts`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig, apply_overrides, config_from
from visionfit.config.validation import check_config
from visionfit.console import logger
from visionfit.distributed import restart_count
from visionfit.engine.run_folder import (
    RESUMABLE_CHANGES,
    check_resume_changes,
    find_resumable_run,
    load_run_config,
    read_status,
)
from visionfit.errors import UserError

TRAIN_ARGUMENTS = "train() arguments"


@dataclass(frozen=True)
class ResumePlan:
    """A train call's finished, validated config and, when it continues a run, that run's folder;
    `search`: continue the newest unfinished run with this config (`resume="auto"`), looked for by
    `find_run` once the processes have joined."""

    config: TrainConfig
    folder: Path | None = None
    search: bool = False


def plan_run(config: TrainConfig | None, resume: str | Path | None, overrides: dict[str, Any]) -> ResumePlan:
    """The plan of a train call, validated here and nowhere after: a new run (`resume=None`) or
    `"auto"` with `config` and `overrides`, or the run folder `resume` with its own config (read
    here, once), where `overrides` may change only the options that do not change what is
    computed."""
    if resume is None or str(resume) == "auto":
        return ResumePlan(config_from(config, overrides, TRAIN_ARGUMENTS), search=resume is not None)
    folder = Path(resume).expanduser()
    saved = load_run_config(folder)
    config = apply_overrides(config or saved, overrides, TRAIN_ARGUMENTS)
    check_config(config)
    return continuing(folder, saved, config)


def continuing(folder: Path, saved: TrainConfig, config: TrainConfig) -> ResumePlan:
    """The plan that continues the run in `folder` (started with `saved`) with `config`."""
    if read_status(folder).get("status") == "finished":
        raise UserError(f"run {folder} already finished; nothing to resume (start a new run with --name)")
    check_resume_changes(folder, saved, config)
    return ResumePlan(config, folder)


def restart_target(resume: str | Path | None, config: TrainConfig) -> str | Path | None:
    """What to resume when torchrun restarted the job (`--max-restarts`): the run its first attempt
    started, found again by every restarted process, instead of a new one. That is the run named
    `--name` when it exists, else the newest unfinished run with this config (`--resume auto`)."""
    count = restart_count()
    if resume is not None or count == 0:
        return resume
    target: str | Path = "auto"
    named = Path(config.run_dir).expanduser() / config.name if config.name is not None else None
    if named is not None and (named / "config.yaml").is_file():
        target = named
    logger.info(f"torchrun restart {count}: resuming {target if target != 'auto' else 'the unfinished run'}")
    return target


def find_run(plan: ResumePlan) -> ResumePlan:
    """The plan with the run it continues found (in one process, once the processes joined): the
    newest unfinished run with the same config for `search`, or the run a torchrun restart
    continues (`restart_target`); a plan that names its run, or a new run, as it is."""
    if plan.folder is not None:
        return plan
    config = plan.config
    target = restart_target("auto" if plan.search else None, config)
    if target is None:
        return plan
    if target != "auto":
        folder = Path(target)
        return continuing(folder, load_run_config(folder), config)
    folder = find_resumable_run(config.run_dir, config)
    if folder is None:
        logger.info(f"no unfinished run with this config in {config.run_dir}: starting a new one")
        return ResumePlan(config)
    changes = {key: getattr(config, key) for key in RESUMABLE_CHANGES}
    # The run's own config (valid when it started) with options checked in `plan_run`: no new check.
    return ResumePlan(apply_overrides(load_run_config(folder), changes, "resume"), folder)
