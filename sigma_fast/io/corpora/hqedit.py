"""HQ-Edit (`UCSC-VLAA/HQ-Edit`): `input_image`, `output_image`, `edit`; `input`/`output` captions
and `inverse_edit` stay in meta. Input and output sizes differ: the annotator handles that."""
import functools

from sigma_fast.io.corpora import parquet

SPEC = parquet.Spec("hqedit", original="input_image", edited="output_image", instruction="edit",
                    signature=("input_image", "output_image", "edit"))
count = parquet.count
read = functools.partial(parquet.read, SPEC)
