"""The Semantic Transformation Parser: rules on the labelled sets, normalisation, bad input, LLM parser."""
import collections
import json
import logging
import pathlib
import time

import pytest
import torch

from sigma_fast.grounding import ALL_ACTIONS, EditTuple, LLMParser, RuleParser, parse_instruction
from sigma_fast.grounding.llm import SYSTEM_PROMPT, edit_from_json, extract_json
from sigma_fast.grounding.text import canonical

DATA = pathlib.Path(__file__).parent / "data"
# instructions.jsonl: the development set the rules were written against; instructions_heldout.jsonl:
# written afterwards, scored once before any rule was changed (see docs/grounding.md).
LABELLED_SETS = ["instructions.jsonl", "instructions_heldout.jsonl"]


def load(name):
    with open(DATA / name) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def concept_match(edit, row):
    """Normalised source and target both equal the labels' (None only equals None)."""
    return canonical(edit.source) == canonical(row["source"]) and canonical(edit.target) == canonical(row["target"])


def scores(rows):
    per_action, total, matched = collections.Counter(), collections.Counter(), 0
    for row in rows:
        edit = parse_instruction(row["text"])
        total[row["action"]] += 1
        per_action[row["action"]] += edit.action == row["action"]
        matched += edit.action == row["action"] and concept_match(edit, row)
    return ({action: per_action[action] / total[action] for action in total},
            sum(per_action.values()) / len(rows), matched / len(rows))


@pytest.mark.parametrize("name", LABELLED_SETS)
def test_labelled_set_is_well_formed(name):
    rows = load(name)
    texts = [row["text"].lower() for row in rows]
    assert len(texts) == len(set(texts))
    for row in rows:
        assert row["action"] in ALL_ACTIONS
        assert (row["source"] is None) == (row["action"] in ("add", "global"))
        assert (row["target"] is None) == (row["action"] in ("remove", "global"))
    assert {row["style"] for row in rows} == {"magicbrush", "instructpix2pix", "ultraedit", "anyedit", "omniedit"}


def test_development_set_accuracy():
    rows = load("instructions.jsonl")
    assert len(rows) >= 300
    per_action, action_accuracy, concept_accuracy = scores(rows)
    assert set(per_action) == {"add", "remove", "replace", "attribute_change", "global"}
    assert action_accuracy >= 0.95
    assert concept_accuracy >= 0.90
    assert min(per_action.values()) >= 0.90, per_action


def test_heldout_set_accuracy():
    per_action, action_accuracy, concept_accuracy = scores(load("instructions_heldout.jsonl"))
    assert action_accuracy >= 0.95
    assert concept_accuracy >= 0.90
    assert min(per_action.values()) >= 0.85, per_action


@pytest.mark.parametrize("text, expected", [
    ("Put two red balloons next to the puppies", ("add", None, "red balloon")),
    ("remove the leaves from the ground", ("remove", "leaf", None)),
    ("take off his sunglasses", ("remove", "sunglasses", None)),
    ("Replace the wolves with sheep", ("replace", "wolf", "sheep")),
    ("swap the children's toys for books", ("replace", "toy", "book")),
    ("Change the colour of the woman's dress to pale green", ("attribute_change", "dress", "pale green")),
    ("make the boxes wooden", ("attribute_change", "box", "wooden")),
    ("let the man wear a pair of glasses", ("add", None, "glasses")),
    ("there should be a glass of milk on the table", ("add", None, "glass of milk")),
    ("make it look like a watercolour", ("global", None, None)),
    ("add a sepia filter", ("global", None, None)),
    ("change the background to a beach", ("global", None, None)),
    ("get rid of the cars parked along the road", ("remove", "car", None)),
    ("there shouldn't be any cars", ("remove", "car", None)),
    ("there should be nothing on the table", ("unknown", None, None)),
])
def test_normalisation(text, expected):
    edit = parse_instruction(text)
    assert (edit.action, edit.source, edit.target) == expected


def test_multi_clause_keeps_the_rest_in_extra():
    edit = parse_instruction("Remove the cup and add a plate; then make it winter.")
    assert (edit.action, edit.source) == ("remove", "cup")
    assert [(e.action, e.source, e.target) for e in edit.extra] == [("add", None, "plate"), ("global", None, None)]
    assert [e.action for e in edit.all_edits()] == ["remove", "add", "global"]
    # "black and white" is not two clauses.
    assert parse_instruction("make the photo black and white").extra == ()


@pytest.mark.parametrize("text", [
    "", "   \n ", None, "Entferne den Hund", "去掉图片里的狗", "удалить собаку с картинки", "x" * 2000,
    ("remove the dog and " * 120)[:2000], "asdf qwer zxcv", "?!", "12345", "remove", "make it",
])
def test_bad_input_is_unknown(text):
    start = time.perf_counter()
    edit = RuleParser().parse(text)
    assert edit == EditTuple("unknown")
    assert not edit.is_local
    assert time.perf_counter() - start < 0.5


def test_parser_is_fast_and_deterministic():
    texts = [row["text"] for row in load("instructions.jsonl")]
    start = time.perf_counter()
    first = RuleParser().parse_batch(texts)
    assert (time.perf_counter() - start) / len(texts) < 2e-3
    assert first == [parse_instruction(text) for text in texts]


def test_canonical_form():
    assert canonical("The Red Balloons") == "red balloon"
    assert canonical("  a  cup of coffee ") == "cup of coffee"
    assert canonical(None) is None and canonical("the") is None


@pytest.mark.parametrize("reply, expected", [
    ('{"action": "replace", "source": "dogs", "target": "a cat"}', ("replace", "dog", "cat")),
    ('Sure!\n```json\n{"action": "add", "source": null, "target": "hat"}\n```', ("add", None, "hat")),
    ("{'action': 'remove', 'source': 'the cups', 'target': None,}", ("remove", "cup", None)),
    ('The answer is {"action": "attribute", "source": "car", "target": "Bright Red"} as asked.',
     ("attribute_change", "car", "bright red")),
    ('{"action": "global", "source": "image", "target": "winter"}', ("global", None, None)),
    # Braces inside strings do not end the object.
    ('{"action": "add", "source": "table", "target": "a {curly} brace"}', ("add", None, "curly brace")),
])
def test_json_replies(reply, expected):
    edit = edit_from_json(extract_json(reply))
    assert (edit.action, edit.source, edit.target) == expected


def test_json_reply_with_extra_edits():
    edit = edit_from_json(extract_json(
        '[{"action": "remove", "source": "cup", "target": null}, {"action": "add", "target": "plate"}]'))
    assert edit == EditTuple("remove", "cup", None, extra=(EditTuple("add", None, "plate"),))


@pytest.mark.parametrize("reply", [
    "", "no json here", '{"action": "add"', '{"action": "explode", "source": "dog", "target": null}',
    '{"action": "replace", "source": "dog", "target": null}', '["not", "an", "edit"]',
    '{"action": "unknown", "source": null, "target": null}',
])
def test_invalid_replies_raise(reply):
    with pytest.raises(ValueError):
        edit_from_json(extract_json(reply))


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_lm_folder(tmp_path_factory):
    """A randomly initialised Qwen2 causal LM and a byte-level BPE tokenizer built here, saved as a folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([SYSTEM_PROMPT, '{"action": "add", "source": null, "target": "hat"}'], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny_lm")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def llm_parser(tiny_lm_folder):
    return LLMParser.from_pretrained(str(tiny_lm_folder), device="cpu", max_new_tokens=6, batch_size=2)


def test_llm_prompt(llm_parser):
    prompt = llm_parser.prompt("  remove the dog ")
    assert prompt.startswith("<|im_start|>system\n" + SYSTEM_PROMPT)
    assert prompt.endswith("<|im_start|>user\nremove the dog<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>assistant") == 7  # six worked examples, then the open turn


def spy_generate(parser, replies=None):
    """Record generate's inputs; with `replies`, answer with their tokens instead of running the model."""
    calls = []
    real = parser.model.generate

    def generate(**kwargs):
        calls.append({name: value.clone() for name, value in kwargs.items() if torch.is_tensor(value)})
        if replies is None:
            return real(**kwargs)
        prompt = kwargs["input_ids"]
        answers = [replies.pop(0) for _ in range(prompt.shape[0])]
        encoded = parser.tokenizer(answers, return_tensors="pt", padding=True, add_special_tokens=False)
        return torch.cat([prompt, encoded["input_ids"]], dim=1)

    parser.model.generate = generate
    return calls


def test_llm_generation_falls_back_on_invalid_output(llm_parser, caplog):
    texts = ["remove the dog", "make it look like a watercolor painting", "add a red hat to the woman"]
    calls = spy_generate(llm_parser)
    with caplog.at_level(logging.WARNING, logger="sigma_fast.grounding.llm"):
        edits = llm_parser.parse_batch(texts)
    assert edits == [parse_instruction(text) for text in texts]  # six random tokens are no JSON
    assert llm_parser.fallbacks == 3
    assert sum("fell back" in record.message for record in caplog.records) == 3
    assert [call["input_ids"].shape[0] for call in calls] == [2, 1]  # batch_size 2
    mask = calls[0]["attention_mask"]
    assert (mask[:, -1] == 1).all()  # left padding: every row ends with a real token
    assert (mask.diff(dim=1) >= 0).all()
    assert mask[0].sum() != mask[1].sum()  # the two prompts differ in length, so one is padded


def test_llm_valid_replies_are_parsed(llm_parser):
    replies = ['{"action": "replace", "source": "the dogs", "target": "a cat"}',
               'Here: {"action": "global", "source": null, "target": null}']
    spy_generate(llm_parser, replies)
    edits = llm_parser.parse_batch(["swap the dogs for a cat", "as a watercolor"])
    assert edits == [EditTuple("replace", "dog", "cat"), EditTuple("global")]
    assert llm_parser.fallbacks == 0


def test_llm_bad_input_skips_the_model(llm_parser):
    calls = spy_generate(llm_parser)
    assert llm_parser.parse_batch(["", "x" * 2000]) == [EditTuple("unknown")] * 2
    assert calls == [] and llm_parser.fallbacks == 0
