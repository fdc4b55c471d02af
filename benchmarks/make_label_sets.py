"""Development sets for label files and multi-label training, made from the real data sets.

python benchmarks/make_label_sets.py flowers --source ~/.cache/visionfit-dev/flowers-dev --out DIR
    DIR/labels.csv over the flower photos (file,label,split: train/ rows are train, val/ rows
    val), roses and tulips cut to a tenth of their training images (an unbalanced set).
python benchmarks/make_label_sets.py mosaics --source ~/.cache/visionfit-dev/cifar10 --out DIR
    2x2 mosaics of CIFAR-10 pictures (64x64 px) in DIR/images, their label sets (the classes
    they show, 1 to 4) in DIR/labels.csv with a split column: a multi-label set.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

CUT_CLASSES = ("roses", "tulips")


def flowers(source: Path, out: Path, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["file,label,split"]
    for split_folder, split in (("train", "train"), ("val", "val")):
        for class_folder in sorted((source / split_folder).iterdir()):
            files = sorted(class_folder.glob("*.jpg"))
            if split == "train" and class_folder.name in CUT_CLASSES:
                files = sorted(rng.sample(files, max(1, len(files) // 10)))
            lines += [f"{file.relative_to(source)},{class_folder.name},{split}" for file in files]
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    print(f"{out / 'labels.csv'}: {len(lines) - 1} rows; use --data-dir {source}")


def mosaics(source: Path, out: Path, counts: dict[str, int], seed: int) -> None:
    from PIL import Image

    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = ["file,labels,split"]
    for split, count in counts.items():
        folder = source / ("train" if split == "train" else "test")  # no picture in two splits
        pool = {cls.name: sorted(cls.glob("*.jpg")) for cls in sorted(folder.iterdir()) if cls.is_dir()}
        classes = sorted(pool)
        for index in range(count):
            shown = [rng.choice(classes) for _ in range(4)]
            mosaic = Image.new("RGB", (64, 64))
            for tile, name in enumerate(shown):
                with Image.open(rng.choice(pool[name])) as picture:
                    mosaic.paste(picture.convert("RGB").resize((32, 32)), (32 * (tile % 2), 32 * (tile // 2)))
            name = f"images/{split}_{index:05d}.png"
            mosaic.save(out / name)
            lines.append(f"{name},{';'.join(sorted(set(shown)))},{split}")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    print(f"{out / 'labels.csv'}: {len(lines) - 1} mosaics")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("flowers", "mosaics"))
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=4000, help="mosaics: training mosaics")
    parser.add_argument("--val", type=int, default=1000, help="mosaics: validation mosaics (from CIFAR test)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    source = arguments.source.expanduser()
    if arguments.kind == "flowers":
        flowers(source, arguments.out, arguments.seed)
    else:
        mosaics(source, arguments.out, {"train": arguments.train, "val": arguments.val}, arguments.seed)


if __name__ == "__main__":
    main()
