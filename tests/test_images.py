import io

import numpy as np
import pytest
import torch
from PIL import Image

from sigma_fast.io.images import ImageLoadError, decode_image, load_image


def png_bytes(image, **params):
    buffer = io.BytesIO()
    image.save(buffer, format=params.pop("format", "PNG"), **params)
    return buffer.getvalue()


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)


def test_all_input_forms_agree(rgb, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    forms = [str(path), path, png_bytes(Image.fromarray(rgb)), Image.fromarray(rgb), rgb, torch.from_numpy(rgb),
             torch.from_numpy(rgb).permute(2, 0, 1), rgb.astype(np.float32) / 255.0]
    for form in forms:
        pixels = load_image(form)
        assert pixels.dtype == torch.uint8 and pixels.shape == (6, 9, 3)
        assert torch.equal(pixels, torch.from_numpy(rgb)), type(form)


def test_rgba_drops_alpha_like_pil_convert(rgb):
    alpha = np.full((6, 9, 1), 7, dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
    assert torch.equal(load_image(png_bytes(rgba)), torch.from_numpy(rgb))


def test_grayscale_palette_and_cmyk(rgb):
    gray = Image.fromarray(rgb[..., 0], "L")
    out = load_image(png_bytes(gray))
    assert torch.equal(out, torch.from_numpy(np.repeat(rgb[..., :1], 3, -1)))
    palette = Image.fromarray(rgb).convert("P")
    assert torch.equal(load_image(png_bytes(palette)), torch.from_numpy(np.asarray(palette.convert("RGB"))))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    decoded = load_image(png_bytes(cmyk, format="JPEG", quality=100))
    assert decoded.shape == (6, 9, 3)
    assert (decoded.float() - torch.from_numpy(rgb).float()).abs().mean() < 12


def test_16_bit_scaled_to_8_bit():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)  # mode I;16
    out = load_image(png_bytes(image))
    assert out[0, :, 0].tolist() == [0, 100, 255]
    assert load_image(values)[0, :, 1].tolist() == [0, 100, 255]


def test_exif_orientation_applied_and_reported(rgb):
    image = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    decoded = decode_image(png_bytes(image, format="JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.pixels.shape == (9, 6, 3)
    assert decoded.reoriented
    assert not decode_image(rgb).reoriented


@pytest.mark.parametrize("source, reason", [
    ("/nonexistent/image.png", "file not found"),
    (b"", "empty bytes"),
    (b"not an image at all", "not a readable image"),
    (np.zeros((0, 4, 3), np.uint8), "empty image"),
    (np.zeros((4, 4, 2), np.uint8), "expected an"),
    (np.full((2, 2, 3), 2.0, np.float32), "[0, 1]"),
    (12345, "unsupported input type"),
])
def test_bad_inputs_raise_clear_errors(source, reason):
    with pytest.raises(ImageLoadError, match=None) as info:
        load_image(source)
    assert reason in str(info.value)


def test_truncated_file_is_reported(tmp_path, rgb):
    data = png_bytes(Image.fromarray(np.tile(rgb, (40, 40, 1))), format="JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(str(path))


def test_mask_rules():
    from sigma_fast.io.images import load_mask

    expected = np.zeros((4, 6), bool)
    expected[1:3, 2:4] = True
    white_on_black = expected.astype(np.uint8) * 255
    assert np.array_equal(load_mask(png_bytes(Image.fromarray(white_on_black))).numpy(), expected)
    # white region on a transparent background: composited over black
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = white_on_black
    assert np.array_equal(load_mask(png_bytes(Image.fromarray(rgba, "RGBA"))).numpy(), expected)
    assert np.array_equal(load_mask(Image.fromarray(rgba, "RGBA")).numpy(), expected)
    upscaled = load_mask(white_on_black, size=(8, 12))
    assert upscaled.shape == (8, 12) and upscaled.sum() == 4 * expected.sum()
    assert np.array_equal(load_mask(expected).numpy(), expected)
    with pytest.raises(ImageLoadError, match="file not found"):
        load_mask("/missing/mask.png")
    with pytest.raises(ImageLoadError, match="corrupt"):
        load_mask(png_bytes(Image.fromarray(white_on_black))[:40])
