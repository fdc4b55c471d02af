"""`visionfit doctor`: what is wrong with a dataset, found before it is trained on.

The checks follow the shape of cleanlab's Datalab (read for its shape only; it is AGPL and no code
comes from it): one `Check` class per kind of problem, registered by name (`checks`), each filling
the same table of issues (file, split, kind, score, given and suggested label, duplicate of) plus a
one-line summary. The evidence they read is gathered once: `collection` (the dataset as one list
of items, whatever its source), `facts` (one streamed pass over every picture: file checks, image
properties, hashes), `evidence` (out-of-sample probabilities and features, only for the checks that
need a model). `report` writes report.json, issues.csv and the suspect grids; `run_doctor` is the
whole story (`options.DoctorOptions` its options). Doctor reads the dataset and never writes to it.
"""

from __future__ import annotations
