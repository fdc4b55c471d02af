"""Doctor's outlier and near-copy findings verified against cleanlab's Datalab (AGPL-3.0: a test-only
dependency, `pip install "cleanlab[datalab]"`, never imported by visionfit) on the same features:
for outliers the embedding, for near copies the 64 bits of the perceptual hashes doctor compares
(Hamming distance, at the same cut). Datalab runs only these two issue types, so
no label search starts a process pool (a forked Pool once hung in CI after torch had started its
threads)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

pytest.importorskip("imagehash")
pytest.importorskip("sklearn")
datalab_module = pytest.importorskip("cleanlab.datalab.datalab", exc_type=ImportError)


def datalab_issues(features: np.ndarray, issue_types: dict[str, dict]) -> object:
    """Datalab's issue table for `features` (labels play no part in these two issue types)."""
    lab = datalab_module.Datalab(
        data={"label": np.zeros(len(features), dtype=int)}, label_name="label", verbosity=0
    )
    lab.find_issues(features=features, issue_types=issue_types)
    return lab


def test_outliers_agree_with_datalab():
    from visionfit.doctor.checks import Evidence, Settings
    from visionfit.doctor.label_checks import Outlier, outlier_scores

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 16))  # four classes' clusters, then eight pictures of none
    features = centres[rng.integers(0, 4, 800)] + rng.normal(0, 1, (800, 16))
    features[:8] = rng.normal(0, 3, (8, 16))
    evidence = Evidence(collection=None, facts=None, settings=Settings(), features=features)  # type: ignore[arg-type]
    ours = {issue.item for issue in Outlier().find(evidence)}  # the 1% farthest: 8 of 800
    lab = datalab_issues(features, {"outlier": {}})
    theirs = lab.get_issues("outlier")
    flagged = set(np.flatnonzero(theirs["is_outlier_issue"].to_numpy()))
    assert ours == set(range(8))
    assert ours <= flagged, (sorted(ours), sorted(flagged))
    # Their score is low for an outlier, ours high: the rankings agree over every item.
    correlation = spearmanr(outlier_scores(features), -theirs["outlier_score"].to_numpy()).statistic
    assert correlation > 0.9, correlation


def smooth_picture(seed: int, side: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((side, side), Image.BICUBIC)


def reencoded(picture: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.fixture
def pictures_with_copies(tmp_path: Path) -> Path:
    """80 distinct pictures in two classes, and 12 near copies of some of them (JPEG quality 50 or
    half size), some filed in the other class. (Crops move the hash of these 6x6-pixel patterns
    far more than a photo's: benchmarks/doctor_copies.py measures crops on photos.)"""
    root = tmp_path / "copies"
    for index in range(80):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        smooth_picture(index, side=80).save(folder / f"{index}.png")
    for index in range(12):
        original = smooth_picture(index * 5, side=80)
        copy = reencoded(original, 50) if index % 2 else original.resize((40, 40), Image.BILINEAR)
        copy.convert("RGB").save(root / ("a" if index % 4 else "b") / f"copy{index}.png")
    return root


def test_near_copies_agree_with_datalab(pictures_with_copies, tmp_path):
    from visionfit.data.registry import SplitShares, load_data
    from visionfit.doctor.options import DoctorOptions
    from visionfit.doctor.run import run_doctor

    data = load_data(None, str(pictures_with_copies), shares=SplitShares(0.2, seed=0))
    report = run_doctor(data, DoctorOptions(output=tmp_path / "report", use_model=False))
    copies = [issue for issue in report.issues if issue.kind == "near_duplicate"]
    ours = {issue.item for issue in copies} | {issue.duplicate_of for issue in copies}
    collection = report.evidence.collection
    planted = {item for item, path in enumerate(collection.paths) if path is not None and "copy" in path.name}
    assert planted <= ours  # every planted copy found (and its original, in `ours`)
    # Datalab on the same 64 hash bits, at the same cut: at most N bits apart (Hamming distance is
    # the share of differing bits; Datalab's cut is relative to the median distance to the nearest
    # neighbour, so it is given as that share over the median).
    hashes = report.evidence.facts.phash
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).astype(float)
    apart = np.bitwise_count(hashes[:, None] ^ hashes[None, :]).astype(float)
    np.fill_diagonal(apart, np.inf)
    median = np.median(apart.min(axis=1) / 64)
    cut = (report.evidence.settings.near_duplicate_bits + 0.5) / 64
    lab = datalab_issues(bits, {"near_duplicate": {"metric": "hamming", "threshold": cut / median}})
    theirs = set(np.flatnonzero(lab.get_issues("near_duplicate")["is_near_duplicate_issue"].to_numpy()))
    assert ours == theirs, (sorted(ours - theirs), sorted(theirs - ours))
    # Their score (low: a copy) orders the items by the distance to their nearest neighbour in
    # the hash, which is what our pairs are cut by.
    score = lab.get_issues("near_duplicate")["near_duplicate_score"].to_numpy()
    correlation = spearmanr(score, apart.min(axis=1)).statistic
    assert correlation > 0.95, correlation


def test_shipped_code_never_imports_cleanlab():
    import ast

    import visionfit

    package = Path(visionfit.__file__).parent
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(name.split(".")[0] == "cleanlab" for name in names), source
