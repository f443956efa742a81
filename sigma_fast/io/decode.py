"""The decode stage: (original, edited) bytes of PairRecords -> uint8 (H, W, 3) tensors on the model's device.

Backends, fastest first: DALI (`fn.decoders.image`, "mixed" = nvJPEG and the hardware JPEG decoder on
CUDA, libjpeg-turbo on the CPU), torchvision's nvJPEG (`decode_jpeg(device="cuda")`, JPEG only), PIL
threads. The batch decoders take only what they decode as PIL reads it: 8-bit RGB or gray baseline or
progressive JPEG (and for DALI 8-bit RGB or gray PNG) without an EXIF orientation. Everything else (16-bit
PNG, CMYK, palette, alpha, animated, EXIF-rotated, other formats) goes to PIL (`images.decode_image`, which
applies EXIF orientation), so a file decodes to the picture a PIL `convert("RGB")` reader sees. Headers are
read first: a decompression bomb (more pixels than PIL's MAX_IMAGE_PIXELS) is refused before any decoding.
A batch decoder that fails on a batch is retried sample by sample; a sample that fails alone goes to PIL,
so only a file PIL cannot read either fails, and only its pair gets a reason.
"""
import io
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from PIL import Image, UnidentifiedImageError

from sigma_fast.io.images import EXIF_ORIENTATION, DecodedImage, ImageLoadError, decode_image
from sigma_fast.io.messages import one_line

log = logging.getLogger(__name__)
BACKENDS = ("auto", "dali", "torchvision", "pil")
HANDLES = {"dali": {"jpeg", "png"}, "torchvision": {"jpeg"}, "pil": set()}  # kinds each batch decoder takes
PNG_GRAY, PNG_RGB = 0, 2  # IHDR colour types without palette or alpha
_logged = set()


def _log_once(message):
    if message not in _logged:
        _logged.add(message)
        log.info(message)


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError, RuntimeError):  # absent, or its CUDA libraries do not load
        return False
    return True


def torchvision_available():
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except (ImportError, OSError, RuntimeError, AttributeError):  # absent, too old, or built for another torch
        return False
    return True


def choose_backend(device, backend="auto"):
    """-> (backend, note): `note` says why a faster backend was not taken (None when none was passed over)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    cuda = device.type == "cuda"
    if backend == "dali" and not dali_available():
        raise ValueError("backend 'dali' needs NVIDIA DALI: pip install 'sigma_fast[dali]'")
    if backend == "torchvision" and not (cuda and torchvision_available()):
        raise ValueError("backend 'torchvision' needs a CUDA device and a torchvision built for this torch")
    if backend != "auto":
        return backend, None
    if dali_available():
        return "dali", None
    if not cuda:
        return "pil", "NVIDIA DALI is not installed (pip install 'sigma_fast[dali]')"
    if torchvision_available():
        return "torchvision", "NVIDIA DALI is not installed (pip install 'sigma_fast[dali]'); JPEG only on the GPU"
    return "pil", "neither NVIDIA DALI nor a torchvision built for this torch is importable: decoding on the CPU"


def batch_kind(image, data):
    """An open PIL image (header read) -> "jpeg" or "png" when a batch decoder reads it as PIL's
    `convert("RGB")` does, else None (PIL decodes it)."""
    if image.mode not in ("RGB", "L"):
        return None
    if image.format == "JPEG":  # MPO (multi-picture) has its own format name: PIL
        return "jpeg" if image.getexif().get(EXIF_ORIENTATION, 1) in (1, None) else None
    if image.format == "PNG" and not getattr(image, "is_animated", False) and "transparency" not in image.info:
        bit_depth, colour = data[24], data[25]  # IHDR follows the 8-byte signature and the chunk header
        # PIL's PNG getexif() decodes the whole image to find an eXIf chunk: search the bytes instead
        if bit_depth == 8 and colour in (PNG_GRAY, PNG_RGB) and b"eXIf" not in data:
            return "png"
    return None


def read_header(data):
    """Encoded bytes -> the kind a batch decoder takes ("jpeg", "png" or None). Raises ImageLoadError for an
    unreadable header or a decompression bomb, before anything is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                raise ImageLoadError("<bytes>", f"{width}x{height} pixels is over the decompression-bomb limit")
            return batch_kind(image, data)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:  # PIL refuses to open over twice its limit
        raise ImageLoadError("<bytes>", f"over the decompression-bomb limit ({one_line(error)})") from error
    except (UnidentifiedImageError, OSError, ValueError, TypeError, SyntaxError, IndexError) as error:
        raise ImageLoadError("<bytes>", f"not a readable image ({one_line(error)})") from error


class DaliDecoder:
    """A DALI pipeline: external_source (encoded bytes) -> decoders.image, "mixed" on CUDA, "cpu" otherwise.
    Outputs reach torch through DLPack (no copy; the dynamic executor keeps them alive)."""

    def __init__(self, device, workers, max_batch):
        self.device, self.workers, self.max_batch = device, workers, max_batch
        self.lock = threading.Lock()  # one run at a time: decode() may be called from several threads
        self.pipe = self._build()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        mixed = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if mixed else None

        @pipeline_def(batch_size=self.max_batch, num_threads=self.workers, device_id=device_id,
                      prefetch_queue_depth=1, exec_dynamic=True)
        def images():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(encoded, device="mixed" if mixed else "cpu", output_type=types.RGB)

        pipe = images()
        pipe.build()
        return pipe

    def __call__(self, blobs):
        """[bytes] (at most max_batch) -> [uint8 (H, W, 3) on the device]; raises if any sample fails."""
        import numpy as np

        with self.lock:
            try:
                self.pipe.feed_input("encoded", [np.frombuffer(blob, dtype=np.uint8) for blob in blobs])
                (decoded,) = self.pipe.run()
            except RuntimeError:
                self.pipe = self._build()  # DALI declares the pipeline invalid after an operator error
                raise
            return [torch.from_dlpack(decoded[i]) for i in range(len(blobs))]


class TorchvisionDecoder:
    """torchvision.io.decode_jpeg on the GPU (nvJPEG), one batched call."""

    def __init__(self, device, max_batch):
        self.device, self.max_batch = device, max_batch

    def __call__(self, blobs):
        from torchvision.io import ImageReadMode, decode_jpeg

        data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)  # [(3, H, W)]
        return [image.permute(1, 2, 0).contiguous() for image in images]


def decode_with_retry(decoder, blobs):
    """[bytes] -> [uint8 (H, W, 3) tensor, or None where `decoder` failed on the sample alone]: one call per
    chunk of `decoder.max_batch`; a chunk that fails is retried sample by sample."""
    out = []
    for start in range(0, len(blobs), decoder.max_batch):
        chunk = blobs[start:start + decoder.max_batch]
        try:
            out.extend(decoder(chunk))
        except RuntimeError as error:
            log.info("batch decode of %d images failed (%s); retrying one by one", len(chunk), one_line(error))
            for blob in chunk:
                try:
                    out.extend(decoder([blob]))
                except RuntimeError:
                    out.append(None)
    return out


def _decode_pil(data):
    """-> DecodedImage on the CPU, or a one-line reason."""
    try:
        return decode_image(data)
    except ImageLoadError as error:
        return one_line(error.reason)


class PairDecoder:
    """Decodes the (original, edited) bytes of PairRecords to uint8 (H, W, 3) tensors on `device`.

    backend: "auto" | "dali" | "torchvision" | "pil"; auto = DALI (mixed on CUDA, CPU pipeline on the CPU)
    if importable, else torchvision nvJPEG on CUDA, else PIL threads. The choice, and why a faster one was not
    available, is logged once at INFO; `self.backend` keeps it. `workers` threads decode what goes to PIL
    (and run DALI's CPU stages); `max_batch` images go into one batch decoder call. On CUDA, decoded pixels
    are ready on the calling thread's current stream; those PIL decoded (odd modes, EXIF-rotated) were copied
    from the host, so a writer that needs host pixels for them pays one copy back."""

    def __init__(self, device="cpu", backend="auto", workers=4, max_batch=64):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        self.device = torch.device(device)
        self.backend, note = choose_backend(self.device, backend)
        _log_once(f"image decoding on {self.device}: {self.backend}" + (f" ({note})" if note else ""))
        if self.backend == "dali":
            self.batch_decoder = DaliDecoder(self.device, workers, max_batch)
        elif self.backend == "torchvision":
            self.batch_decoder = TorchvisionDecoder(self.device, max_batch)
        else:
            self.batch_decoder = None
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sigma-pil-decode")

    def decode(self, records):
        """[PairRecord] -> one entry per record, same order: (original, edited) DecodedImages with pixels on
        the device, or a one-line reason naming the bad image."""
        images = [data for record in records for data in (record.original, record.edited)]
        results, batched = [None] * len(images), []  # DecodedImage or reason; indices for the batch decoder
        for i, data in enumerate(images):
            try:
                kind = read_header(data)
            except ImageLoadError as error:
                results[i] = error.reason
                continue
            if kind in HANDLES[self.backend]:
                batched.append(i)
            else:
                results[i] = self.pool.submit(_decode_pil, data)
        if batched:
            for i, pixels in zip(batched, decode_with_retry(self.batch_decoder, [images[i] for i in batched])):
                # a file the batch decoder refuses alone may still be one PIL reads; else PIL says why
                results[i] = DecodedImage(pixels, False) if pixels is not None else self.pool.submit(_decode_pil,
                                                                                                     images[i])
        results = [result.result() if isinstance(result, Future) else result for result in results]
        return [self._pair(results[2 * n], results[2 * n + 1]) for n in range(len(records))]

    def _pair(self, original, edited):
        for role, result in (("original", original), ("edited", edited)):
            if isinstance(result, str):
                return f"{role} image: {result}"
        return tuple(DecodedImage(image.pixels.to(self.device), image.reoriented) for image in (original, edited))

    def close(self):
        self.pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
