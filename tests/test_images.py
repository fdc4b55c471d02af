import io

import numpy as np
import pytest
from PIL import Image

from visionfit.data.folder import is_image_name
from visionfit.data.images import open_rgb, to_rgb
from visionfit.errors import UserError


def saved(tmp_path, image, name, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


@pytest.mark.parametrize(
    ("mode", "color"),
    [
        ("L", 128),
        ("RGB", (10, 20, 30)),
        ("CMYK", (0, 255, 255, 0)),
        ("I", 40000),
    ],
)
def test_every_mode_becomes_three_channel_rgb(tmp_path, mode, color):
    path = saved(tmp_path, Image.new(mode, (5, 4), color), "x.tif")
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (5, 4)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    sixteen_bit = Image.fromarray(values)
    assert sixteen_bit.mode == "I;16"
    image = to_rgb(sixteen_bit)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_converts_to_the_expected_colour(tmp_path):
    path = saved(tmp_path, Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "red.jpg")
    red, green, blue = np.asarray(open_rgb(path))[0, 0]
    assert red > 200 and green < 60 and blue < 60


def test_transparent_pixels_become_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    pixels = np.asarray(open_rgb(saved(tmp_path, rgba, "a.png")))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[0, 1].tolist() == [0, 0, 255]
    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(open_rgb(saved(tmp_path, la, "la.png")))[0, 0].tolist() == [255, 255, 255]


def test_palette_image_with_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    path = saved(tmp_path, palette, "p.png", transparency=0)
    assert np.asarray(open_rgb(path)).tolist() == [[[255, 255, 255], [0, 255, 0]]]
    path = saved(tmp_path, palette, "p.gif")
    assert open_rgb(path).mode == "RGB"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    # A 4x2 picture with its red pixel in the top-left corner, stored as the camera saw it.
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = saved(tmp_path, stored, f"o{orientation}.png", exif=exif)
    image = open_rgb(path)
    expected_size = (2, 4) if orientation >= 5 else (4, 2)
    assert image.size == expected_size
    reference = np.asarray(
        stored.transpose(
            {
                2: Image.Transpose.FLIP_LEFT_RIGHT,
                3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90,
            }[orientation]
        )
        if orientation > 1
        else stored
    )
    assert np.array_equal(np.asarray(image), reference)


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"", "empty.jpg"),
        (b"hello, I am text", "text.jpg"),
    ],
)
def test_unreadable_files_are_user_errors_naming_the_file(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=name):
        open_rgb(path)


def test_truncated_jpeg_is_a_user_error(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UserError, match="cut.jpg: not a readable image"):
        open_rgb(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        open_rgb(tmp_path / "nope.png")


def test_image_names():
    assert is_image_name("a.JPG") and is_image_name("b.webp") and is_image_name("c.jpeg")
    assert not is_image_name("._a.jpg") and not is_image_name("notes.txt")
