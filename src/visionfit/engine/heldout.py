"""The test split of a run with a validation split: measured once, after the last epoch, on the
weights validation chose (`best`). The epochs never see the test samples (`DataSplits.for_epochs`);
this is the one place that reads them."""

from __future__ import annotations

from visionfit.data.loaders import default_workers, eval_loader
from visionfit.data.order import shard
from visionfit.data.samples import Samples
from visionfit.data.transforms import PictureReader
from visionfit.distributed import barrier, gather_to_main, local_world_size
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.engine.checkpointing import BEST
from visionfit.engine.epochs import TrainingRun
from visionfit.engine.loops import Classifier, Evaluation, evaluate
from visionfit.engine.metrics import Predictions


def test_best_weights(run: TrainingRun, samples: Samples) -> Evaluation:
    """Load `best` into the tested model (the average with --ema) and classify the test `samples`
    with the run's test-time augmentation, each rank its share; sums over all ranks, predictions
    joined on rank 0."""
    config, runtime = run.config, run.runtime
    barrier()  # rank 0 wrote best
    checkpoint = load_checkpoint(run.checkpoints.folder / BEST, device=runtime.device)
    run.tested_model.load_state_dict(checkpoint.model_state)
    workers = config.workers
    if workers is None:
        workers = default_workers(runtime.device, samples, local_world_size())
    batches = eval_loader(
        samples,
        PictureReader(run.preprocess),
        batch_size=max(1, config.test_batch_size // runtime.world_size),
        workers=workers,
        device=runtime.device,
        indices=shard(range(len(samples)), runtime.rank, runtime.world_size),
    )
    classifier = Classifier(
        run.tested_model,
        run.batches.normalize,
        runtime,
        flip=config.test_time_flip,
        shift=config.test_time_shift,
    )
    evaluation = evaluate(classifier, batches, len(run.classes), keep="predictions")
    predictions = None
    if evaluation.predictions is not None:
        parts = gather_to_main(evaluation.predictions)
        predictions = Predictions.joined(parts) if parts is not None else None
    return Evaluation(evaluation.sums.across_processes(), predictions)
