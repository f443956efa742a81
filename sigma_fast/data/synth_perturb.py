"""Editor-like perturbation of a whole edited image: a round trip through a small learned
autoencoder (the stand-in for a diffusion editor's VAE; its fine detail is kept over the input's
local colour), down/up resampling, and JPEG.

The autoencoder is trained once on generated scenes and cached on disk under a key made of its
training settings, so every run with the same settings uses the same weights."""
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from sigma_fast.data.synth_scene import available_photos, compose, make_scene, to_uint8
from sigma_fast.ops import vae_roundtrip_composite

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/sigma_fast"
TRAINING_VERSION = 1  # part of the cache key: bump when the training recipe changes
POOL_SIZE = 128       # side of the generated training scenes
DOWN = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
UP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}


@dataclass(frozen=True)
class AutoencoderSettings:
    steps: int = 1000
    batch: int = 8
    crop: int = 32
    scenes: int = 128         # training scenes generated, cropped at random every step
    lr: float = 3e-3          # peak of the warm-up then cosine schedule
    seed: int = 0
    photos: bool = True       # mix in scikit-image's photographs and textures when installed

    def key(self):
        # the photographs actually found change the training data, so they are part of the key
        settings = {**asdict(self), "photos": list(available_photos()) if self.photos else [],
                    "version": TRAINING_VERSION}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def build_autoencoder():
    # No mid-block attention: at 256x256 it attends over 16k tokens and makes a round trip 7x
    # slower. 8 norm groups, not 32: one channel per group erases the colour of flat regions,
    # which then takes far longer to learn.
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         mid_block_add_attention=False, norm_num_groups=8)


def _to_tensor(images):
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _training_scenes(settings):
    rng = np.random.default_rng(settings.seed)
    scenes = [compose(make_scene(rng, POOL_SIZE, settings.photos, 0.3)) for _ in range(settings.scenes)]
    return _to_tensor(np.stack(scenes))


def _batch(rng, pool, settings):
    index = rng.integers(len(pool), size=settings.batch)
    corners = rng.integers(0, POOL_SIZE - settings.crop + 1, size=(settings.batch, 2))
    crops = [pool[i, :, y:y + settings.crop, x:x + settings.crop] for i, (y, x) in zip(index, corners)]
    flips = rng.random(settings.batch) < 0.5
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips)])


def _schedule(step, steps):
    # linear warm-up over the first tenth, then cosine decay to zero
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@contextlib.contextmanager
def _one_thread():
    # CPU convolutions give slightly different sums with different thread counts, so one thread
    # makes weights and outputs independent of the setting; on a busy machine it is also faster
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_autoencoder(settings):
    """A freshly trained autoencoder (L1 reconstruction), deterministic for `settings` on a given
    CPU type."""
    with _one_thread():
        return _train(settings)


def _train(settings):
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        model = build_autoencoder()
    rng = np.random.default_rng(settings.seed + 1)
    pool = _training_scenes(settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    start = time.perf_counter()
    model.train()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _schedule(step, settings.steps)
        batch = _batch(rng, pool, settings)
        # decoded from the latent mean, as the round trip is: a plain autoencoder, no KL term
        recon = model.decode(model.encode(batch).latent_dist.mode()).sample
        loss = (recon - batch).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log.info("trained the synthetic-edit autoencoder (%d steps) in %.1f s, last L1 loss %.4f",
             settings.steps, time.perf_counter() - start, loss.item())
    return model.eval()


def autoencoder_path(settings, cache_dir=None):
    return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / f"synth-autoencoder-{settings.key()}"


_LOADED = {}


def load_autoencoder(settings, cache_dir=None):
    """The cached autoencoder for `settings`, trained and saved on first use."""
    from diffusers import AutoencoderKL

    path = autoencoder_path(settings, cache_dir)
    if path not in _LOADED:
        if not (path / "config.json").is_file():
            _save(train_autoencoder(settings), path)
        _LOADED[path] = AutoencoderKL.from_pretrained(path, low_cpu_mem_usage=False).eval()
    return _LOADED[path]


def _save(model, path):
    # write aside, then rename: a concurrent reader never sees half a checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".staging-"))
    model.save_pretrained(staging)
    try:
        os.replace(staging, path)
    except OSError:
        shutil.rmtree(staging)  # another process saved the same settings first
        if not (path / "config.json").is_file():
            raise


def autoencoder_roundtrip(model, image):
    """uint8 (H, W, 3) -> uint8 (H, W, 3): encode, decode the latent mode, save as an editor does."""
    with torch.inference_mode(), _one_thread():
        decoded = model.decode(model.encode(_to_tensor(image[None])).latent_dist.mode()).sample
    return vae_roundtrip_composite(decoded)[0].numpy()


def keep_colour(decoded, image):
    """The decoded image's fine detail over the input's local colour. A briefly trained autoencoder
    renders detail much as an editor's VAE does but shifts colours, which real VAEs keep."""
    sigma = image.shape[0] / 128

    def low(x):
        return cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)

    return to_uint8(decoded - low(decoded) + low(image))


def resample(rng, image):
    """Down- then up-scale, as editors that work at another resolution do: (image, info)."""
    height, width = image.shape[:2]
    scale = float(rng.uniform(0.5, 0.95))
    down, up = str(rng.choice(list(DOWN))), str(rng.choice(list(UP)))
    small = cv2.resize(image, (max(round(width * scale), 1), max(round(height * scale), 1)), interpolation=DOWN[down])
    return cv2.resize(small, (width, height), interpolation=UP[up]), {"scale": round(scale, 4), "down": down, "up": up}


def jpeg(image, quality):
    """-> (decoded uint8 image, the JPEG bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    data = buffer.getvalue()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), data


def perturb(rng, image, autoencoder, jpeg_quality):
    """-> (perturbed image, info, JPEG bytes). `autoencoder`: a model from `load_autoencoder`, or None."""
    info = {"autoencoder": autoencoder is not None}
    if autoencoder is not None:
        image = keep_colour(autoencoder_roundtrip(autoencoder, image), image)
    image, info["resample"] = resample(rng, image)
    info["jpeg_quality"] = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
    image, data = jpeg(image, info["jpeg_quality"])
    return image, info, data
