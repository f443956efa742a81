"""OmniEdit (`TIGER-Lab/OmniEdit-Filtered-1.2M`): `src_img`, `edited_img`, `edited_prompt_list`,
`task` (-> meta["action"]), scores (`sc_score_*`, `pq_score`, `o_score`, ...) kept in meta.
Key: `omni_edit_id` when present, else `"{file stem}/{row:08d}"`.

One instruction is chosen from `edited_prompt_list`: among its non-blank entries, the one at
`sha256(key) mod count` (first 8 digest bytes, big-endian), so the choice depends only on the key
and is stable across runs and machines; meta["prompt_index"] is its position in the list."""
import functools
import hashlib

from sigma_fast.io.corpora import parquet


def choose(key, prompts):
    """-> (instruction, position in `prompts`) or (None, None) when no entry is usable."""
    if isinstance(prompts, str):
        prompts = [prompts]
    usable = [position for position, text in enumerate(prompts or []) if isinstance(text, str) and text.strip()]
    if not usable:
        return None, None
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    position = usable[int.from_bytes(digest[:8], "big") % len(usable)]
    return prompts[position], position


def describe(spec, row, default_key):
    key = row.get("omni_edit_id")
    key = default_key if key in (None, "") else str(key)
    prompts = row.get(spec.instruction)
    instruction, position = choose(key, prompts)
    if instruction is None:
        instruction = "" if isinstance(prompts, (list, str)) else None  # "empty" vs "missing" instruction
    return key, instruction, {"action": row.get("task"), "prompt_index": position,
                              "edited_prompt_list": list(prompts) if isinstance(prompts, list) else prompts}


SPEC = parquet.Spec("omniedit", original="src_img", edited="edited_img", instruction="edited_prompt_list",
                    signature=("src_img", "edited_img", "edited_prompt_list"), describe=describe)
count = parquet.count
read = functools.partial(parquet.read, SPEC)
