"""OpenSDI (`nebula/OpenSDI_train`, `nebula/OpenSDI_test`): HF parquet with `key`, `image`, `mask`,
`label` (0 real, 1 diffusion-made: local edit or whole image). The generator split (sd15, sd2, sdxl,
sd3, flux) is read from the file's path (a folder named so, or a file name starting `<split>-` or
`<split>_`) into `meta["split"]`; pass one split's files to read only it. Single-image: see
`sigma_fast.io.corpora.benchmark`."""
import re

from sigma_fast.io.corpora import benchmark, parquet

SPLITS = ("sd15", "sd2", "sdxl", "sd3", "flux")
TAMPERED = (1,)
count = parquet.count


def split_of(source):
    """The generator split named by a source path, or None."""
    for part in reversed(re.split(r"[\\/]", source)):
        head = re.split(r"[-_.]", part, maxsplit=1)[0].lower()
        if head in SPLITS:
            return head
    return None


def read(source, skip=0):
    return (yield from benchmark.read_parquet(source, skip, "opensdi", "image", "mask", "label", "key", TAMPERED,
                                              extra=lambda path: {"split": split_of(path)}))
