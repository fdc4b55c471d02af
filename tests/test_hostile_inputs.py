"""A corpus of awkward and broken inputs: every good kind loads, every bad kind is reported before
training (or skipped on request), nothing is decoded that should not be, no input is modified."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tree_digest
from visionfit.cli import main
from visionfit.data.images import open_rgb
from visionfit.data.scan import check_image
from visionfit.errors import UserError


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20000) -> bytes:
    """A valid, tiny PNG header announcing side x side pixels (400 million at 20000)."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (1 + side // 8) * 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def noise(mode: str = "RGB", size: tuple[int, int] = (24, 16)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def with_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(noise(), "JPEG", exif=exif)


def palette_with_transparency() -> bytes:
    image = noise("P")
    return encoded(image, "PNG", transparency=0)


GOOD = {
    "rgba.png": lambda: encoded(noise("RGBA"), "PNG"),
    "palette.png": palette_with_transparency,
    "la.png": lambda: encoded(noise("LA"), "PNG"),
    "gray.png": lambda: encoded(noise("L"), "PNG"),
    "sixteen.png": lambda: encoded(Image.fromarray(np.full((9, 9), 40000, dtype=np.uint16)), "PNG"),
    "cmyk.jpg": lambda: encoded(noise("CMYK"), "JPEG"),
    "one_pixel.png": lambda: encoded(noise(size=(1, 1)), "PNG"),
    **{f"exif{orientation}.jpg": (lambda o=orientation: with_exif(o)) for orientation in range(1, 9)},
}


def truncated_jpeg() -> bytes:
    data = encoded(noise(size=(64, 64)), "JPEG")
    return data[: len(data) // 2]


def png_with_wrong_crc() -> bytes:
    data = bytearray(encoded(noise(), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first byte of the IDAT chunk's CRC
    return bytes(data)


BAD = {
    "truncated.jpg": truncated_jpeg,
    "zero_bytes.jpg": lambda: b"",
    "text.jpg": lambda: b"this is a text file with an image name\n",
    "bad_crc.png": png_with_wrong_crc,
    "bomb.png": bomb_png,
}


def build_corpus(root: Path) -> Path:
    """Two classes holding every good and bad kind, plus a .git folder and a symlink loop."""
    for index, (name, make) in enumerate({**GOOD, **BAD}.items()):
        path = root / ("alpha" if index % 2 else "beta") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())
    for class_name in ("alpha", "beta"):
        for index in range(6):
            (root / class_name / f"plain{index}.png").write_bytes(encoded(noise(), "PNG"))
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "objects" / "x.png").write_bytes(encoded(noise(), "PNG"))
    (root / "alpha" / "loop").symlink_to(root / "alpha")
    return root


@pytest.fixture
def corpus(tmp_path):
    return build_corpus(tmp_path / "corpus")


@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_good_kind_passes_the_scan_and_decodes_to_rgb(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(GOOD[name]())
    assert check_image(path) is None
    assert open_rgb(path).mode == "RGB"


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_bad_kind_is_found_by_the_scan(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD[name]())
    assert check_image(path) is not None


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    started = time.perf_counter()
    assert "decompression bomb" in check_image(path)
    with pytest.raises(UserError, match="too many pixels"):
        open_rgb(path)
    assert time.perf_counter() - started < 5  # 400 million pixels would take far longer to decode


def train_on(corpus: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        str(corpus),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-tensorboard",
        "--run-dir",
        str(tmp_path / "runs"),
        "--name",
        "r",
        *extra,
    ]


def test_bad_files_stop_training_before_it_starts_with_one_line(corpus, tmp_path, capsys):
    before = tree_digest(corpus)
    assert main(train_on(corpus, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{len(BAD)} unreadable image file(s)" in err
    assert "--bad-images skip" in err
    assert not (tmp_path / "runs" / "r").exists()  # stopped before a run folder was made
    assert tree_digest(corpus) == before


def test_skip_trains_on_the_rest_and_lists_what_it_left_out(corpus, tmp_path, capsys):
    before = tree_digest(corpus)
    assert main(train_on(corpus, tmp_path, "--bad-images", "skip", "--test-fraction", "0.3")) == 0
    run = tmp_path / "runs" / "r"
    listed = (run / "skipped_images.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == sorted(BAD)
    from visionfit.engine.checkpoint_file import load_checkpoint

    checkpoint = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert checkpoint.classes == ["alpha", "beta"]  # hidden .git is no class; indices unchanged
    assert checkpoint.metadata["data"]["train"] + checkpoint.metadata["data"]["test"] == len(GOOD) + 12
    assert tree_digest(corpus) == before


def test_an_empty_class_folder_is_an_error_naming_it(corpus, tmp_path, capsys):
    (corpus / "gamma").mkdir()
    assert main(train_on(corpus, tmp_path, "--bad-images", "skip")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "class folder" in err and "gamma has no images" in err


def test_files_that_passed_the_check_are_not_checked_again_until_they_change(tmp_path, monkeypatch):
    import visionfit.data.scan as scan

    folder = tmp_path / "pictures"
    folder.mkdir()
    good = [folder / f"{index}.png" for index in range(3)]
    for path in good:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not a picture")
    checked: list[Path] = []
    real = scan.check_image
    monkeypatch.setattr(scan, "check_image", lambda path: checked.append(path) or real(path))

    assert [path for path, _ in scan.find_bad_images_once([*good, broken])] == [broken]
    assert sorted(checked) == sorted([*good, broken])
    checked.clear()
    assert [path for path, _ in scan.find_bad_images_once([*good, broken])] == [broken]
    assert checked == [broken]  # the good files are remembered; the bad one is reported again
    checked.clear()
    Image.new("RGB", (9, 9), (200, 20, 30)).save(good[1])  # changed: checked again
    os.utime(good[1], ns=(1, 10**18))
    scan.find_bad_images_once([*good, broken])
    assert sorted(checked) == sorted([good[1], broken])
