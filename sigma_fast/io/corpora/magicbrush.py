"""MagicBrush (`osunlp/MagicBrush`): `img_id`, `turn_index`, `source_img`, `mask_img`,
`instruction`, `target_img`; key `"{img_id}/{turn_index}"`, the turn also in meta["turn"].
`mask_img` is the free-form region the annotator painted (may be RGBA, of another size)."""
import functools

from sigma_fast.io.corpora import parquet


def describe(spec, row, default_key):
    img_id, turn = row.get("img_id"), row.get("turn_index")
    key = default_key if img_id is None or turn is None else f"{img_id}/{turn}"
    return key, row.get(spec.instruction), {"turn": turn}


SPEC = parquet.Spec("magicbrush", original="source_img", edited="target_img", instruction="instruction",
                    mask="mask_img", signature=("img_id", "turn_index", "source_img", "target_img"),
                    describe=describe)
count = parquet.count
read = functools.partial(parquet.read, SPEC)
