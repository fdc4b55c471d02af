"""The engine: what runs a model over data, below training and inference.

`loops` (train steps, `Classifier`, the one `evaluate`), `epochs` (the epoch loop), `checkpointing`
(what a run keeps and when), `checkpoint_file` (the file format), `ema`, `features` (the frozen
backbone's cache), `resume`, `heldout` (the test split after a validated run), `run_folder`,
`run_lock` (one writer per run folder), `preemption` (stop signals, parent death), `events`,
`metrics`, `calibration` (ECE/MCE/NLL/Brier, `fit_temperature`), `optim`, `state`. Import the
modules themselves; this package exports nothing, so importing one part loads no other.
"""
