"""HTML pages that open from disk in any browser, images written beside them as PNG files.

- `write_report` (`sigma-fast demo`): per pair the original, the edited image, the ground truth
  and per-pair F1 when a mask exists, the mask overlaid on the edited image, the spatial prior
  (when not flat) and the score.
- `write_eval_report` (`sigma-fast eval`): the methods' tables (all, per benchmark, per action, per
  group), the JPEG robustness curves (matplotlib, Agg), and a gallery of the best and worst pairs.
"""
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


PAGE_STYLE = ("body{font-family:sans-serif;margin:1em} .row{display:flex;gap:8px;flex-wrap:wrap} figure{margin:0} "
              "img{border:1px solid #999} figcaption{text-align:center;font-size:small} "
              "section{border-bottom:1px solid #ccc} table{border-collapse:collapse;margin:0.5em 0} "
              "td,th{border:1px solid #bbb;padding:2px 6px;text-align:right} th{background:#eee}")


def mask_rgb(mask):
    """(H, W) bool or 0/255 mask -> uint8 (H, W, 3) white on black."""
    return np.repeat(((np.asarray(mask) > 0) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def save_figures(folder, prefix, panels):
    """{label: PIL image} -> HTML <figure> cells, the images saved as folder/report_files/prefix_label.png."""
    files = os.path.join(folder, "report_files")
    os.makedirs(files, exist_ok=True)
    cells = []
    for label, image in panels.items():
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{prefix}_{label}") + ".png"
        image.save(os.path.join(files, name))
        cells.append(f'<figure><img src="report_files/{html.escape(name)}" alt="{html.escape(label)}">'
                     f"<figcaption>{html.escape(label)}</figcaption></figure>")
    return "".join(cells)


def page(title, body):
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{PAGE_STYLE}</style>\n</head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def write_report(out_dir, items, title="sigma_fast annotations"):
    """`items`: dicts with key, instruction, edit (dict), score, original, edited (uint8 HxWx3),
    mask (uint8 HxW), prior ((g, g) float array, or None for a flat prior: no prior column), and
    optionally gt (HxW ground-truth mask) and f1. Returns the page path."""
    rows = []
    for index, item in enumerate(items):
        key = item["key"]
        panels = {"original": thumbnail(item["original"]), "edited": thumbnail(item["edited"])}
        if item.get("gt") is not None:
            panels["ground truth"] = thumbnail(mask_rgb(item["gt"]), resample=Image.NEAREST)
        panels["mask overlay"] = thumbnail(overlay(item["edited"], item["mask"]))
        if item.get("prior") is not None:
            panels["prior"] = thumbnail(prior_image(item["prior"], item["mask"].shape), resample=Image.NEAREST)
        edit = item.get("edit") or {}
        f1 = f" &middot; F1 {item['f1']:.3f}" if item.get("f1") is not None else ""
        summary = (f"<b>{html.escape(key)}</b> &middot; “{html.escape(item['instruction'])}” &middot; "
                   f"{html.escape(str(edit.get('action')))}({html.escape(str(edit.get('source')))} &rarr; "
                   f"{html.escape(str(edit.get('target')))}) &middot; score {item['score']:.3f}{f1}")
        rows.append(f'<section><p>{summary}</p><div class="row">{save_figures(out_dir, f"{index}_{key}", panels)}'
                    "</div></section>")
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as handle:
        handle.write(page(title, f"<p>{len(items)} pair(s). Red: the annotated mask.</p>\n" + "".join(rows)))
    return path


def gallery_panels(original, edited, gt, masks, prior=None, size=THUMBNAIL // 2):
    """Small thumbnails for the eval gallery: original, edited, ground truth, each method's mask
    overlaid on the edited image ({method: uint8 mask}), and the prior when given."""
    panels = {"original": thumbnail(original, size), "edited": thumbnail(edited, size),
              "ground truth": thumbnail(mask_rgb(gt), size, Image.NEAREST)}
    for method, mask in masks.items():
        panels[method] = thumbnail(overlay(edited, mask), size)
    if prior is not None:
        panels["prior"] = thumbnail(prior_image(prior, edited.shape[:2]), size, Image.NEAREST)
    return panels


def number(value):
    return "" if value is None else f"{value:.3f}"


def metrics_table(rows, label):
    """[(label value, method, PixelMetrics.compute() dict)] -> an HTML table."""
    head = (f"<tr><th>{html.escape(label)}</th><th>method</th><th>images</th><th>mean F1</th><th>mean IoU</th>"
            "<th>mean AUC</th><th>pooled F1</th><th>pooled IoU</th><th>pooled AUC</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(str(name))}</td><td>{html.escape(method)}</td><td>{m['images']}</td>"
        + "".join(f"<td>{number(m[kind][key])}</td>" for kind in ("mean", "pooled") for key in ("f1", "iou", "auc"))
        + "</tr>" for name, method, m in rows)
    return f"<table>{head}{body}</table>"


def robustness_plot(out_dir, robustness):
    """F1 and IoU (mean over images) against JPEG quality, a line per method and scale ->
    report_files/robustness.png and .svg; the PNG's relative path, or None without a sweep."""
    curves = {}
    for method, found in robustness.items():
        for entry in found.values():
            if entry["quality"] is not None:
                curves.setdefault((method, entry["scale"]), []).append(entry)
    if not curves:
        return None
    import matplotlib  # only a sweep needs it: the `eval` extra

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    styles = {1.0: "-", 0.75: "--", 0.5: ":"}
    colours = {method: f"C{i}" for i, method in enumerate(robustness)}
    for axis, key in zip(axes, ("f1", "iou")):
        for (method, scale), entries in curves.items():
            entries = sorted(entries, key=lambda e: -e["quality"])
            axis.plot([e["quality"] for e in entries], [e["mean"][key] for e in entries], marker="o",
                      color=colours[method], linestyle=styles.get(scale, "-."),
                      label=method if scale == 1.0 else f"{method}, resized x{scale:g}")
        axis.set_xlabel("JPEG quality of the edited image")
        axis.set_ylabel(f"mean {key.upper()}")
        axis.set_ylim(0, 1)
        axis.invert_xaxis()
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    files = os.path.join(out_dir, "report_files")
    os.makedirs(files, exist_ok=True)
    for suffix in ("png", "svg"):
        figure.savefig(os.path.join(files, f"robustness.{suffix}"), dpi=100)
    pyplot.close(figure)
    return "report_files/robustness.png"


def robustness_table(robustness):
    methods = list(robustness)
    names = list(dict.fromkeys(name for found in robustness.values() for name in found))
    head = "<tr><th>condition</th>" + "".join(f"<th>{html.escape(m)} F1 / IoU</th>" for m in methods) + "</tr>"
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(
        f"<td>{number(robustness[m][name]['mean']['f1'])} / {number(robustness[m][name]['mean']['iou'])}</td>"
        for m in methods) + "</tr>" for name in names)
    return f"<table>{head}{body}</table>"


def gallery_html(out_dir, title, items, prefix):
    sections = []
    for index, item in enumerate(items):
        scores = ", ".join(f"{html.escape(m)} {f1:.3f}" for m, f1 in item["f1"].items())
        caption = (f"<b>{html.escape(item['key'])}</b> &middot; “{html.escape(item['instruction'])}” &middot; "
                   f"{html.escape(str(item['action']))} &middot; F1: {scores}")
        cells = save_figures(out_dir, f"{prefix}{index}_{item['key']}", item["panels"])
        sections.append(f'<section><p>{caption}</p><div class="row">{cells}</div></section>')
    return f"<h2>{html.escape(title)}</h2>" + ("".join(sections) or "<p>none</p>")


def write_eval_report(out_dir, summary, best, worst):
    """`summary`: `sigma_fast.evaluate.evaluate`'s; `best`, `worst`: gallery items (dicts with key,
    instruction, action, f1 {method: F1}, panels {label: PIL image}). -> the page path."""
    tables, methods = summary["tables"], summary["methods"]
    notes = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(summary['notes'][m])}</li>" for m in methods)
    calibration = summary.get("calibration")
    if calibration:
        notes += (f"<li>feature threshold {calibration['threshold']:g}: {html.escape(calibration['rule'])}, "
                  f"{calibration['dev_pairs']} dev pair(s) from {html.escape(calibration['dev_source'])}</li>")
    body = [f"<ul>{notes}<li>averaging {html.escape(summary['averaging'])}: "
            f"{html.escape(summary['averaging_rule'])}</li>"
            f"<li>{len(summary['failures'])} row(s) skipped (see eval_summary.json)</li></ul>",
            "<h2>All pairs</h2>", metrics_table([("all", m, tables[m]["all"]) for m in methods], "set")]
    for section, title in (("benchmark", "Per benchmark"), ("action", "Per action"),
                           ("group", "Per group (local: pasted edits; regenerated: whole image re-synthesised)")):
        names = sorted({name for m in methods for name in tables[m][section]})
        rows = [(name, m, tables[m][section][name]) for name in names for m in methods if name in tables[m][section]]
        body += [f"<h2>{html.escape(title)}</h2>", metrics_table(rows, section)]
    plot = robustness_plot(out_dir, summary["robustness"])
    if plot:
        body += ["<h2>JPEG robustness (mean over images)</h2>", f'<img src="{plot}" alt="robustness curves">',
                 robustness_table(summary["robustness"])]
    primary = summary["primary"]
    body.append(gallery_html(out_dir, f"Best {len(best)} pairs by {primary} F1", best, "best"))
    body.append(gallery_html(out_dir, f"Worst {len(worst)} pairs by {primary} F1", worst, "worst"))
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as handle:
        handle.write(page("sigma_fast evaluation", "\n".join(body)))
    return path
