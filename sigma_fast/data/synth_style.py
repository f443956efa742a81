"""Whole-image styles for the synthetic `global` edits: each takes and returns uint8 (H, W, 3) RGB."""
import cv2
import numpy as np

from sigma_fast.data.synth_scene import to_uint8

SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)


def _gray(image):
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _rows(image):
    # 0 at the top row, 1 at the bottom, shaped to broadcast over (H, W, 3)
    return np.linspace(0, 1, image.shape[0], dtype=np.float32)[:, None, None]


def winter(image, rng):
    f = image.astype(np.float32)
    f = (0.45 * f + 0.55 * _gray(image)[..., None]) * 0.8 + 50
    f = f * np.float32([0.93, 0.98, 1.08])
    flakes = (rng.random(image.shape[:2]) < 0.003).astype(np.float32)
    flakes = np.clip(cv2.GaussianBlur(flakes, (0, 0), 0.8) * 6, 0, 1)[..., None]
    return to_uint8(f * (1 - flakes) + 250 * flakes)


def night(image, rng):
    f = (image.astype(np.float32) / 255) ** rng.uniform(1.2, 1.6) * 255 * rng.uniform(0.35, 0.5)
    return to_uint8(f * np.float32([0.75, 0.85, 1.25]))


def sunset(image, rng):
    glow = np.float32([255, 140, 60]) * rng.uniform(0.25, 0.4) * (1 - _rows(image))
    return to_uint8(image.astype(np.float32) * np.float32([1.1, 0.9, 0.7]) + glow)


def autumn(image, rng):
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hue = hsv[..., 0]
    greenish = (hue > 20) & (hue < 95)
    hue[greenish] = 12 + (hue[greenish] - 12) * rng.uniform(0.1, 0.3)
    hsv[..., 1] = np.minimum(hsv[..., 1] * 1.2 + 20, 255)
    warm = cv2.cvtColor(to_uint8(hsv), cv2.COLOR_HSV2RGB).astype(np.float32)
    return to_uint8(warm * np.float32([1.08, 0.97, 0.85]))


def vintage(image, rng):
    f = image.astype(np.float32) @ SEPIA.T * 0.85 + 25
    yy, xx = np.mgrid[-1:1:image.shape[0] * 1j, -1:1:image.shape[1] * 1j]
    vignette = 1 - rng.uniform(0.2, 0.4) * (yy * yy + xx * xx) / 2
    return to_uint8(f * vignette[..., None].astype(np.float32))


def grayscale(image, rng):
    return np.repeat(to_uint8(_gray(image))[..., None], 3, axis=2)


def painting(image, rng):
    return cv2.stylization(image, sigma_s=float(rng.uniform(30, 60)), sigma_r=0.45)


def sketch(image, rng):
    gray, _ = cv2.pencilSketch(image, sigma_s=float(rng.uniform(30, 60)), sigma_r=0.07, shade_factor=0.05)
    return np.repeat(gray[..., None], 3, axis=2)


def cartoon(image, rng):
    smooth = cv2.bilateralFilter(cv2.bilateralFilter(image, 9, 60, 7), 9, 60, 7)
    levels = int(rng.integers(4, 8))
    step = 256 // levels
    flat = (smooth // step) * step + step // 2
    edges = cv2.adaptiveThreshold(cv2.medianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 5), 255,
                                  cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return np.where(edges[..., None] > 0, flat, 20).astype(np.uint8)


def fog(image, rng):
    amount = rng.uniform(0.35, 0.6) * (0.6 + 0.4 * (1 - _rows(image)))
    soft = cv2.GaussianBlur(image, (0, 0), 1.0).astype(np.float32)
    return to_uint8(soft * (1 - amount) + 210 * amount)


STYLES = {"winter": winter, "night": night, "sunset": sunset, "autumn": autumn, "vintage": vintage,
          "grayscale": grayscale, "painting": painting, "sketch": sketch, "cartoon": cartoon, "fog": fog}
