"""Decoding of every input form to uint8 (H, W, 3) RGB tensors.

Conversions (chosen to match what IML training code reads back with PIL's `.convert("RGB")`):
EXIF orientation is applied; alpha is dropped (RGBA, LA, palette with transparency); grayscale is
replicated to 3 channels; CMYK goes through PIL's conversion; 16-bit and 32-bit integer images are
scaled to 8 bits by their type's range, float images from [0, 1].
"""
import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
HIGH_BIT_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


class ImageLoadError(ValueError):
    """An input that cannot be turned into an RGB image (missing, corrupt, truncated, bad shape)."""

    def __init__(self, source, reason):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


@dataclass
class DecodedImage:
    pixels: torch.Tensor  # uint8 (H, W, 3)
    reoriented: bool  # EXIF orientation changed the stored geometry: readers that ignore EXIF see another image


def describe(source):
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__}>"


def _from_pil(image: Image.Image):
    reoriented = image.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        scale = HIGH_BIT_MODES[image.mode] if image.mode != "I" or values.max() > 255 else 255
        gray = np.clip(np.round(values * (255.0 / scale)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1), reoriented
    if image.mode == "F":
        return _from_float(np.asarray(image)[..., None].repeat(3, axis=-1)), reoriented
    return np.asarray(image.convert("RGB")), reoriented


def _from_float(array):
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise ValueError("float images must hold finite values in [0, 1]")
    return np.round(array * 255.0).astype(np.uint8)


def _from_array(array: np.ndarray):
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"empty image of shape {array.shape}")
    if array.dtype == np.uint16:
        array = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = _from_float(array)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ValueError(f"unsupported pixel dtype {array.dtype} (use uint8, uint16, bool or float in [0, 1])")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array[..., :3]


def _open_pil(source):
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise ImageLoadError(describe(source), "file not found")
        if not os.path.isfile(source):
            raise ImageLoadError(describe(source), "not a file")
        return Image.open(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(describe(source), "empty bytes")
        return Image.open(io.BytesIO(bytes(source)))
    return None


def decode_image(source) -> DecodedImage:
    """Any supported input -> DecodedImage. Raises ImageLoadError with the reason otherwise."""
    name = describe(source)
    try:
        if isinstance(source, Image.Image):
            array, reoriented = _from_pil(source)
        elif isinstance(source, np.ndarray):
            array, reoriented = _from_array(source), False
        elif isinstance(source, torch.Tensor):
            tensor = source.detach().cpu()
            if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
                tensor = tensor.permute(1, 2, 0)  # CHW -> HWC
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            array, reoriented = _from_array(tensor.numpy()), False
        else:
            image = _open_pil(source)
            if image is None:
                raise TypeError(f"unsupported input type {type(source).__name__} (use a path, bytes, a PIL image, "
                                "a uint8 numpy array or a tensor)")
            with image:
                image.load()  # forces the full decode: truncated and corrupt files fail here
                array, reoriented = _from_pil(image)
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ImageLoadError(name, f"not a readable image ({error})") from error
    except ImageLoadError:
        raise
    except OSError as error:
        raise ImageLoadError(name, f"corrupt or truncated image ({error})") from error
    except (ValueError, TypeError, SyntaxError) as error:
        raise ImageLoadError(name, str(error)) from error
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # PIL's buffers are read-only; torch wants to own writable memory
        array = array.copy()
    return DecodedImage(torch.from_numpy(array), reoriented)


def load_image(source) -> torch.Tensor:
    """Any supported input -> uint8 (H, W, 3) RGB tensor."""
    return decode_image(source).pixels


def mask_values(image: Image.Image) -> np.ndarray:
    """A decoded PIL mask -> float32 (H, W) in [0, 1]: luminance times alpha, i.e. the mask
    composited over black, so white marks the edit ("free-form mask image (white region)", as
    MagicBrush's card says) whether the mask is opaque white-on-black or white on transparent."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3]
        grey = np.asarray(image.convert("RGB").convert("L"), dtype=np.float32)
        return grey * alpha / (255.0 * 255.0)
    if image.mode in HIGH_BIT_MODES or image.mode == "F":
        return decode_image(image).pixels.float().mean(-1).numpy() / 255.0
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def load_mask(source, size=None) -> torch.Tensor:
    """A ground-truth edit mask (path, bytes, PIL image, array or tensor) -> bool (H, W), True where
    the image was edited: `mask_values` > 0.5. `size` (H, W) resizes a mask of another size (area
    coverage through an antialiased bilinear resize of the values, then > 0.5)."""
    if isinstance(source, Image.Image):
        values = mask_values(source)
    elif isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        try:
            with _open_pil(source) as image:
                image.load()
                values = mask_values(image)
        except ImageLoadError:
            raise
        except (OSError, ValueError) as error:
            raise ImageLoadError(describe(source), f"corrupt or unreadable mask ({error})") from error
    else:
        values = load_image(source).float().mean(-1).numpy() / 255.0
    values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if size is not None and tuple(values.shape) != tuple(size):
        values = torch.nn.functional.interpolate(values[None, None], size=tuple(size), mode="bilinear",
                                                 antialias=True, align_corners=False)[0, 0]
    return values > 0.5
