"""SID_Set (`saberzl/SID_Set`, SIDA): HF parquet with `img_id`, `image`, `mask`, `label` (0 real,
1 fully synthetic, 2 tampered: only label 2 is `meta["tampered"]`); `mask` is null for untampered
rows. Single-image: see `sigma_fast.io.corpora.benchmark`. Key: `img_id`."""
from sigma_fast.io.corpora import benchmark, parquet

TAMPERED = (2,)
count = parquet.count


def read(source, skip=0):
    return (yield from benchmark.read_parquet(source, skip, "sid_set", "image", "mask", "label", "img_id", TAMPERED))
