"""Image decoding and dataset writing."""
from sigma_fast.io.images import DecodedImage, ImageLoadError, decode_image, load_image

__all__ = ["DecodedImage", "ImageLoadError", "decode_image", "load_image"]
