"""UltraEdit (`BleachNick/UltraEdit`): `source_image`, `edited_image`, `edit_prompt`, `mask_image`
(null in the free-form splits, a region mask in `UltraEdit_Region_Based_100k`); captions, CLIP/DINO
similarities and `edit_object` stay in meta."""
import functools

from sigma_fast.io.corpora import parquet

SPEC = parquet.Spec("ultraedit", original="source_image", edited="edited_image", instruction="edit_prompt",
                    mask="mask_image", signature=("source_image", "edited_image", "edit_prompt"))
count = parquet.count
read = functools.partial(parquet.read, SPEC)
