"""`report.html`: a spot-check page showing, per pair, the original, the edited image, the mask
overlaid on the edited image, the spatial prior and the score. Thumbnails are written beside the
page as PNG files so the page opens from disk in any browser."""
import html
import os

import numpy as np
from PIL import Image

THUMBNAIL = 256
OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)


def thumbnail(array, size=THUMBNAIL, resample=Image.BILINEAR):
    image = Image.fromarray(array)
    scale = size / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)


def overlay(edited, mask, alpha=0.5):
    """Edited image (H, W, 3) with the mask (H, W, 0/255) tinted red."""
    weight = (mask[..., None] > 0) * alpha
    return (edited * (1 - weight) + OVERLAY_COLOUR * weight).round().astype(np.uint8)


def prior_image(prior, shape):
    """A (g, g) prior in [0, 1] as a grayscale image of `shape` (nearest, so the grid stays visible)."""
    grid = (np.clip(prior, 0, 1) * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((shape[1], shape[0]), Image.NEAREST))


def write_report(out_dir, items, title="sigma_fast annotations"):
    """`items`: dicts with key, instruction, edit (dict), score, original, edited (uint8 HxWx3),
    mask (uint8 HxW) and prior ((g, g) float array, or None for a flat prior). Returns the page path."""
    thumbs = os.path.join(out_dir, "report_files")
    os.makedirs(thumbs, exist_ok=True)
    rows = []
    for item in items:
        key = item["key"]
        prior = item.get("prior")
        panels = {
            "original": thumbnail(item["original"]),
            "edited": thumbnail(item["edited"]),
            "mask overlay": thumbnail(overlay(item["edited"], item["mask"])),
            "prior": thumbnail(prior_image(prior if prior is not None else np.ones((1, 1)), item["mask"].shape),
                               resample=Image.NEAREST),
        }
        cells = []
        for label, image in panels.items():
            name = f"{key}_{label.replace(' ', '_')}.png"
            image.save(os.path.join(thumbs, name))
            caption = label + (" (flat)" if label == "prior" and prior is None else "")
            cells.append(f'<figure><img src="report_files/{html.escape(name)}" alt="{html.escape(label)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        edit = item.get("edit") or {}
        summary = (f"<b>{html.escape(key)}</b> &middot; “{html.escape(item['instruction'])}” &middot; "
                   f"{html.escape(str(edit.get('action')))}({html.escape(str(edit.get('source')))} &rarr; "
                   f"{html.escape(str(edit.get('target')))}) &middot; score {item['score']:.3f}")
        rows.append(f'<section><p>{summary}</p><div class="row">{"".join(cells)}</div></section>')
    page = os.path.join(out_dir, "report.html")
    with open(page, "w") as handle:
        handle.write(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} .row{{display:flex;gap:8px;flex-wrap:wrap}}
figure{{margin:0}} img{{border:1px solid #999}} figcaption{{text-align:center;font-size:small}} section{{border-bottom:1px solid #ccc}}</style>
</head><body><h1>{html.escape(title)}</h1><p>{len(items)} pair(s). Red: the annotated mask.</p>
{"".join(rows)}
</body></html>
""")
    return page
