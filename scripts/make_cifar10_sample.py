"""Build src/visionfit/data/cifar10_sample.npz, the CIFAR-10 sample bundled with the package.

Takes the first 500 train and 100 test images of every class (sorted file names) from the
development copy unpacked by ../shared/data/unpack.sh, and stores their JPEG bytes unchanged, so the
sample is the same pixels as that copy. Usage: python scripts/make_cifar10_sample.py CIFAR10_DIR
"""

import sys
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = {"train": 500, "test": 100}
OUTPUT = Path(__file__).resolve().parents[1] / "src/visionfit/data/cifar10_sample.npz"


def pack(root: Path, split: str) -> dict[str, np.ndarray]:
    blobs, labels = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((root / split / name).glob("*.jpg"))[: PER_CLASS[split]]:
            blobs.append(path.read_bytes())
            labels.append(label)
    offsets = np.cumsum([0] + [len(blob) for blob in blobs]).astype(np.int64)
    return {
        f"{split}_jpeg": np.frombuffer(b"".join(blobs), dtype=np.uint8),
        f"{split}_offsets": offsets,
        f"{split}_labels": np.asarray(labels, dtype=np.uint8),
    }


def main(root: Path) -> None:
    arrays = {**pack(root, "train"), **pack(root, "test"), "classes": np.asarray(CLASSES)}
    np.savez(OUTPUT, **arrays)
    print(f"{OUTPUT}: {OUTPUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
