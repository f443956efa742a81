"""Generated training data for tests/test_train_*.py: pairs whose edit is a coloured square
pasted onto a smooth random background, written as MagicBrush-style parquet or a manifest."""
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def png_bytes(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def make_pair(seed, size=64):
    """-> original, edited uint8 (size, size, 3), mask uint8 (size, size) 0/255, instruction."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (4, 4, 3)).astype(np.uint8)
    original = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
    original = np.clip(original + rng.normal(0, 4, original.shape), 0, 255).astype(np.uint8)
    side = int(rng.integers(size // 4, size // 2))
    top, left = (int(v) for v in rng.integers(0, size - side, 2))
    name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    edited = original.copy()
    edited[top:top + side, left:left + side] = COLOURS[name]
    mask = np.zeros((size, size), np.uint8)
    mask[top:top + side, left:left + side] = 255
    return original, edited, mask, f"add a {name} square"


def rgba_mask(mask):
    """MagicBrush-style mask: white strokes, opaque, on a transparent black canvas (RGBA)."""
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[..., :3] = mask[..., None]
    rgba[..., 3] = mask
    return rgba


def write_parquet(path, count, seed=0, row_group_size=8, mask_style="rgba", corrupt=()):
    """A MagicBrush-style parquet: source_img / target_img / mask_img {bytes, path} structs.
    Masks are RGBA (and at half size for odd rows); rows in `corrupt` get garbage target bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"img_id": [], "source_img": [], "target_img": [], "mask_img": [], "instruction": []}
    for index in range(count):
        original, edited, mask, instruction = make_pair(seed * 100003 + index)
        if mask_style == "rgba":
            mask_image = rgba_mask(mask)
            if index % 2:
                mask_image = np.asarray(Image.fromarray(mask_image).resize((32, 32), Image.NEAREST))
            mask_png = png_bytes(mask_image, "RGBA")
        else:
            mask_png = png_bytes(mask)
        target = b"not a png" if index in corrupt else png_bytes(edited)
        rows["img_id"].append(str(index))
        rows["source_img"].append({"bytes": png_bytes(original), "path": f"{index}_source.png"})
        rows["target_img"].append({"bytes": target, "path": f"{index}_target.png"})
        rows["mask_img"].append({"bytes": mask_png, "path": f"{index}_mask.png"})
        rows["instruction"].append(instruction)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("img_id", pa.string()), ("source_img", image), ("target_img", image),
                        ("mask_img", image), ("instruction", pa.string())])
    pq.write_table(pa.table(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def write_manifest(folder, count, seed=0, with_mask=True):
    """PNG files and a JSONL manifest (relative paths) of generated pairs."""
    os.makedirs(folder, exist_ok=True)
    lines = []
    for index in range(count):
        original, edited, mask, instruction = make_pair(seed * 100003 + index)
        row = {"original": f"{index}_o.png", "edited": f"{index}_e.png", "instruction": instruction}
        Image.fromarray(original).save(os.path.join(folder, row["original"]))
        Image.fromarray(edited).save(os.path.join(folder, row["edited"]))
        if with_mask:
            row["mask"] = f"{index}_m.png"
            Image.fromarray(mask).save(os.path.join(folder, row["mask"]))
        lines.append(json.dumps(row))
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def write_tiny_vae(folder, latent_channels=4, **config):
    """A tiny random diffusers AutoencoderKL, saved like a hub VAE (`config`: e.g. FLUX.1's
    scaling_factor and shift_factor)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        **config)
    vae.save_pretrained(folder)
    return folder


def tiny_overrides(tiny_encoders, output_dir, train, val=None, **extra):
    """Overrides that point configs/tiny_stage1.yaml at this test's encoders and data."""
    backbone, text_encoder = tiny_encoders
    values = {"output_dir": str(output_dir), "model.backbone": backbone, "model.text_encoder": text_encoder,
              "data.train": [{"format": "parquet", "path": str(train)}],
              "data.val": [{"format": "parquet", "path": str(val)}] if val else []}
    values.update(extra)
    return values
