"""InstructPix2Pix (`timbrooks/instructpix2pix-clip-filtered`): `original_image`, `edit_prompt`,
`edited_image`; `original_prompt` and `edited_prompt` stay in meta. No mask (both images generated)."""
import functools

from sigma_fast.io.corpora import parquet

SPEC = parquet.Spec("instructpix2pix", original="original_image", edited="edited_image", instruction="edit_prompt",
                    signature=("original_image", "edited_image", "edit_prompt"))
count = parquet.count
read = functools.partial(parquet.read, SPEC)
