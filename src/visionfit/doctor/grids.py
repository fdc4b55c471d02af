"""PNG grids of the worst suspects of one kind, each tile captioned, so the user looks before
believing: copies are drawn next to the picture they copy."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from visionfit.doctor.checks import Issue
from visionfit.doctor.collection import Collection

TILE = 128  # pixels per picture
CAPTION = 28  # pixels of text under each tile
COLUMNS = 4


def _tile(collection: Collection, item: int) -> Image.Image:
    try:
        picture = collection.picture(item)
    except Exception:  # a broken file: a grey tile says so
        return Image.new("RGB", (TILE, TILE), (128, 128, 128))
    # Small pictures (CIFAR's 32 pixels) are enlarged with visible pixels, large ones shrunk.
    scale = TILE / max(picture.width, picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    tile = Image.new("RGB", (TILE, TILE), (255, 255, 255))
    tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    return tile


def _caption(collection: Collection, item: int, text: str) -> str:
    return f"{collection.splits[item]} {collection.label_name(item)}\n{text}"


def suspect_grid(issues: list[Issue], collection: Collection, path: Path) -> None:
    """Draw `issues` (each with an item) as a grid; a copy takes two tiles: copy, then original."""
    cells: list[tuple[int, str]] = []
    for issue in issues:
        note = f"{issue.score:.2f}"
        if issue.suggested is not None:
            note += f" -> {collection.label_text(issue.suggested)}"
        cells.append((issue.item, note))  # type: ignore[arg-type]
        if issue.duplicate_of is not None:
            cells.append((issue.duplicate_of, "its original"))
    columns = COLUMNS * 2 if any(issue.duplicate_of is not None for issue in issues) else COLUMNS
    rows = (len(cells) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + CAPTION)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for position, (item, note) in enumerate(cells):
        left, top = (position % columns) * TILE, (position // columns) * (TILE + CAPTION)
        sheet.paste(_tile(collection, item), (left, top))
        draw.text((left + 2, top + TILE + 1), _caption(collection, item, note), fill=(0, 0, 0))
    sheet.save(path)
