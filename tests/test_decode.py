"""The decode stage (sigma_fast.io.decode): DALI's CPU pipeline against PIL, the PIL fallback for what batch
decoders do not read like PIL, the per-sample retry, the bomb refusal and the backend choice."""
import io
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sigma_fast.io import decode as decode_module
from sigma_fast.io.corpora import PairRecord
from sigma_fast.io.decode import (PairDecoder, choose_backend, dali_available,
                                  decode_with_retry, read_header)
from sigma_fast.io.images import decode_image

# DALI's CPU decoder and Pillow both use libjpeg-turbo: measured max difference 0 (DALI 2.4, Pillow 13);
# one level allows a rounding change between library versions
JPEG_CPU_TOLERANCE = 1
# nvJPEG (GPU) against libjpeg-turbo: other IDCT and chroma upsampling; a gate, to be tightened once measured
JPEG_GPU_MAX, JPEG_GPU_MEAN = 16, 1.0

needs_dali = pytest.mark.skipif(not dali_available(), reason="needs NVIDIA DALI (pip install 'sigma_fast[dali]')")


def smooth(height, width, seed, channels=3):
    """A photo-like image (JPEG's blocks stay small on it), uint8 (H, W, C)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((height // 8 + 1, width // 8 + 1, channels)) * 255).astype(np.uint8).squeeze())
    return np.asarray(coarse.resize((width, height), Image.BILINEAR))


def encode(array_or_image, format, **params):
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def pair(n, original, edited):
    return PairRecord(n, f"k{n}", original, edited, "add a hat")


def max_difference(pixels, data):
    reference = decode_image(data).pixels
    assert pixels.shape == reference.shape
    return (pixels.cpu().int() - reference.int()).abs().max().item()


class Recorder:
    """Wraps a batch decoder and records the size of each call."""

    def __init__(self, decoder):
        self.decoder, self.max_batch, self.calls = decoder, decoder.max_batch, []

    def __call__(self, blobs):
        self.calls.append(len(blobs))
        return self.decoder(blobs)


@pytest.fixture(scope="module")
def dali_decoder():
    decoder = PairDecoder("cpu", backend="dali", workers=2)
    yield decoder
    decoder.close()


@pytest.fixture
def recorded(dali_decoder, monkeypatch):
    recorder = Recorder(dali_decoder.batch_decoder)
    monkeypatch.setattr(dali_decoder, "batch_decoder", recorder)
    return dali_decoder, recorder


def batch_images():
    """JPEGs and 8-bit PNGs of different sizes that a batch decoder takes (ragged batch)."""
    gray = smooth(40, 52, 5, channels=1)
    return {
        "jpeg_420": encode(smooth(61, 83, 1), "JPEG", quality=90),
        "jpeg_444": encode(smooth(48, 40, 2), "JPEG", quality=95, subsampling=0),
        "jpeg_progressive": encode(smooth(33, 47, 3), "JPEG", quality=80, progressive=True),
        "jpeg_gray": encode(gray, "JPEG", quality=85),
        "png_rgb": encode(np.random.default_rng(4).integers(0, 256, (37, 53, 3), dtype=np.uint8), "PNG"),
        "png_gray": encode(gray, "PNG"),
    }


@needs_dali
def test_dali_cpu_pipeline_matches_pil(recorded):
    decoder, recorder = recorded
    images = list(batch_images().items())
    records = [pair(n, images[2 * n][1], images[2 * n + 1][1]) for n in range(len(images) // 2)]
    results = decoder.decode(records)
    assert recorder.calls == [len(images)]  # one ragged batch, nothing sent to PIL
    decoded = [image for result in results for image in result]
    for (name, data), image in zip(images, decoded):
        assert image.pixels.dtype == torch.uint8 and image.pixels.device.type == "cpu"
        assert not image.reoriented
        tolerance = JPEG_CPU_TOLERANCE if name.startswith("jpeg") else 0
        assert max_difference(image.pixels, data) <= tolerance, name


def test_headers_are_read_without_decoding(monkeypatch):
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded while reading a header"))
    kinds = {name: read_header(data) for name, data in batch_images().items()}
    assert kinds == {name: name.split("_")[0] for name in kinds}


def odd_images():
    """Files a batch decoder would read unlike PIL's convert("RGB"): each must go to PIL."""
    rgb = smooth(30, 42, 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    frames = [Image.fromarray(smooth(20, 24, seed)) for seed in (8, 9)]
    rgb_with_key = Image.fromarray(rgb)
    rgb_with_key.info["transparency"] = (0, 0, 0)
    return {
        "png_gray16": encode(Image.fromarray((smooth(24, 28, 10, channels=1).astype(np.uint16) * 257)), "PNG"),
        "jpeg_cmyk": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90),
        "png_palette": encode(Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"),
        "png_rgba": encode(np.dstack([rgb, smooth(30, 42, 11, channels=1)]), "PNG"),
        "png_la": encode(Image.fromarray(rgb).convert("LA"), "PNG"),
        "png_transparency_key": encode(rgb_with_key, "PNG", transparency=(0, 0, 0)),
        "png_animated": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "gif_animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": encode(rgb, "WEBP", quality=90),
        "jpeg_exif_rotated": encode(rgb, "JPEG", quality=90, exif=exif.tobytes()),
        "png_exif_rotated": encode(rgb, "PNG", exif=exif.tobytes()),
    }


@needs_dali
def test_odd_modes_go_to_pil(recorded):
    decoder, recorder = recorded
    odd = odd_images()
    plain = batch_images()["jpeg_420"]
    results = decoder.decode([pair(n, data, plain) for n, data in enumerate(odd.values())])
    assert recorder.calls == [len(odd)]  # only the plain JPEGs went to DALI
    for (name, data), (original, edited) in zip(odd.items(), results):
        reference = decode_image(data)
        assert torch.equal(original.pixels, reference.pixels), name
        assert original.reoriented == reference.reoriented == name.endswith("exif_rotated"), name
        assert max_difference(edited.pixels, plain) <= JPEG_CPU_TOLERANCE


@needs_dali
def test_corrupt_image_in_batch_fails_only_its_pair(recorded):
    decoder, recorder = recorded
    images = batch_images()
    good = images["jpeg_420"]
    truncated = good[:len(good) // 2]  # header intact: it reaches the batch decoder
    records = [pair(0, good, images["png_rgb"]), pair(1, images["jpeg_444"], truncated),
               pair(2, images["jpeg_gray"], good)]
    results = decoder.decode(records)
    assert recorder.calls == [6, 1, 1, 1, 1, 1, 1]  # the batch, then each sample alone
    assert results[1].startswith("edited image: ") and "truncated" in results[1]
    assert "\n" not in results[1]
    for result, record in zip((results[0], results[2]), (records[0], records[2])):
        assert max_difference(result[0].pixels, record.original) <= JPEG_CPU_TOLERANCE
        assert max_difference(result[1].pixels, record.edited) <= JPEG_CPU_TOLERANCE
    # the pipeline still decodes after the failure
    assert isinstance(decoder.decode([records[0]])[0], tuple)


def test_sample_a_batch_decoder_refuses_alone_goes_to_pil():
    images = batch_images()
    refused = images["png_gray"]

    class Picky:
        max_batch = 4

        def __call__(self, blobs):
            if refused in blobs:
                raise RuntimeError("unsupported\nmulti-line error")
            return [decode_image(blob).pixels for blob in blobs]

    blobs = [images["jpeg_420"], refused, images["png_rgb"], images["jpeg_gray"], images["jpeg_444"]]
    out = decode_with_retry(Picky(), blobs)
    assert out[1] is None and all(pixels is not None for n, pixels in enumerate(out) if n != 1)
    with PairDecoder("cpu", backend="pil", workers=1) as decoder:
        decoder.backend, decoder.batch_decoder = "dali", Picky()
        original, edited = decoder.decode([pair(0, images["jpeg_420"], refused)])[0]
    assert torch.equal(edited.pixels, decode_image(refused).pixels)  # PIL read what the batch decoder refused


def test_bomb_is_refused_before_decoding(monkeypatch):
    images = batch_images()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60 * 60)  # 83x61 is over it; 120x100, over twice it
    decoded = []
    monkeypatch.setattr(decode_module, "decode_image", lambda data: decoded.append(data) or decode_image(data))
    big = encode(smooth(100, 120, 0), "PNG")
    with PairDecoder("cpu", backend="pil", workers=1) as decoder:
        results = decoder.decode([pair(0, images["png_gray"], images["jpeg_420"]), pair(1, big, images["png_gray"])])
    assert decoded == [images["png_gray"]] * 2  # the bombs were never decoded
    assert results[0] == "edited image: 83x61 pixels is over the decompression-bomb limit"
    assert results[1].startswith("original image: over the decompression-bomb limit (")  # PIL's own refusal


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10])
def test_unreadable_header_is_a_reason(data):
    with PairDecoder("cpu", backend="pil", workers=1) as decoder:
        (result,) = decoder.decode([pair(0, batch_images()["jpeg_420"], data)])
    assert result.startswith("edited image: not a readable image")


def test_pil_backend_matches_decode_image():
    images = list(batch_images().values()) + list(odd_images().values())
    records = [pair(n, images[n], images[-1 - n]) for n in range(len(images))]
    records.append(pair(len(images), images[0], b"garbage"))
    with PairDecoder("cpu", backend="pil", workers=2) as decoder:
        results = decoder.decode(records)
    assert decoder.backend == "pil"
    assert results[-1] == "edited image: not a readable image (cannot identify image file <_io.BytesIO object>)"
    for record, (original, edited) in zip(records[:-1], results):
        assert torch.equal(original.pixels, decode_image(record.original).pixels)
        assert torch.equal(edited.pixels, decode_image(record.edited).pixels)


@needs_dali
def test_auto_picks_dali_when_importable(caplog, monkeypatch):
    monkeypatch.setattr(decode_module, "_logged", set())
    with caplog.at_level(logging.INFO, logger="sigma_fast.io.decode"):
        with PairDecoder("cpu", workers=1) as decoder:
            assert decoder.backend == "dali"
    assert "image decoding on cpu: dali" in caplog.text


def test_auto_without_dali_uses_pil_and_says_why(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali raises ImportError
    monkeypatch.setattr(decode_module, "_logged", set())
    with caplog.at_level(logging.INFO, logger="sigma_fast.io.decode"):
        with PairDecoder("cpu", workers=1) as decoder:
            assert decoder.backend == "pil"
        PairDecoder("cpu", workers=1).close()
    assert caplog.text.count("DALI is not installed") == 1  # logged once
    with pytest.raises(ValueError, match="pip install"):
        PairDecoder("cpu", backend="dali")


@pytest.mark.parametrize("dali_ok, torchvision_ok, expected", [
    (True, True, "dali"), (False, True, "torchvision"), (False, False, "pil")])
def test_auto_on_cuda_prefers_dali_then_torchvision(monkeypatch, dali_ok, torchvision_ok, expected):
    monkeypatch.setattr(decode_module, "dali_available", lambda: dali_ok)
    monkeypatch.setattr(decode_module, "torchvision_available", lambda: torchvision_ok)
    backend, note = choose_backend(torch.device("cuda"), "auto")
    assert backend == expected and (note is None) == (expected == "dali")


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        PairDecoder("cpu", backend="nvjpeg")
    with pytest.raises(ValueError, match="CUDA device"):
        PairDecoder("cpu", backend="torchvision")
    with pytest.raises(ValueError, match="workers"):
        PairDecoder("cpu", workers=0)


def gpu_check(backend):
    images = batch_images()
    jpegs = [data for name, data in images.items() if name.startswith("jpeg")]
    jpegs.append(encode(smooth(1024, 768, 12), "JPEG", quality=90))
    records = [pair(n, jpegs[n], jpegs[-1 - n]) for n in range(len(jpegs))]
    good = records[0].original
    records.append(pair(len(records), good, good[:len(good) // 2]))
    with PairDecoder("cuda", backend=backend, workers=2) as decoder:
        results = decoder.decode(records)
    assert results[-1].startswith("edited image: ")
    worst = 0
    for record, (original, edited) in zip(records, results[:-1]):
        for image, data in ((original, record.original), (edited, record.edited)):
            assert image.pixels.is_cuda and image.pixels.is_contiguous()
            difference = (image.pixels.cpu().int() - decode_image(data).pixels.int()).abs()
            assert difference.float().mean().item() <= JPEG_GPU_MEAN
            worst = max(worst, difference.max().item())
    print(f"{backend} on the GPU: max |difference| to PIL {worst}")
    assert worst <= JPEG_GPU_MAX


@pytest.mark.gpu
def test_dali_mixed_matches_pil_within_jpeg_bound():
    gpu_check("dali")


@pytest.mark.gpu
def test_torchvision_nvjpeg_matches_pil_within_jpeg_bound():
    pytest.importorskip("torchvision.io")
    gpu_check("torchvision")
