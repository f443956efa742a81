"""`--parser rules|llm`: the LLM parser's cache, its fallbacks, and its plumbing into the commands and training.
The tiny random LM produces garbage, so these test the plumbing, not the parses."""
import json
import logging
import pickle

import pytest

from sigma_fast.cli import build_parser, load_annotator
from sigma_fast.grounding import EditTuple, LLMParser, parse_instruction
from sigma_fast.grounding.parsers import MISSING, ParseCache, edit_from_dict, load_parser
from sigma_fast.train import load_train_config, train
from test_grounding_parser import spy_generate, tiny_lm_folder  # noqa: F401  (the fixture)
from train_helpers import CONFIGS, tiny_overrides, write_parquet

TEXTS = ["remove the dog", "make it look like a watercolor painting"]
TWO_EDITS = EditTuple("remove", "cup", None, extra=(EditTuple("add", None, "plate"),))


def llm(folder, cache_dir):
    return load_parser("llm", str(folder), cache_dir=str(cache_dir), device="cpu")


def test_cache_round_trips_edits_and_failed_replies(tmp_path):
    cache = ParseCache("some/model", tmp_path)
    cache.put("remove the cup and add a plate", TWO_EDITS)
    cache.put("gibberish", None)
    fresh = ParseCache("some/model", tmp_path)
    assert fresh.get("remove the cup and add a plate") == TWO_EDITS
    assert fresh.get("gibberish") is None
    assert fresh.get("never seen") is MISSING
    assert ParseCache("other/model", tmp_path).get("gibberish") is MISSING  # keyed by model id too
    assert edit_from_dict(TWO_EDITS.to_dict()) == TWO_EDITS
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_garbage_replies_fall_back_to_rules_and_run_the_model_once(tiny_lm_folder, tmp_path):
    parser = llm(tiny_lm_folder, tmp_path)
    assert isinstance(parser, LLMParser)
    parser.max_new_tokens = 4
    calls = spy_generate(parser)
    assert parser.parse_batch(TEXTS) == [parse_instruction(text) for text in TEXTS]
    assert parser.fallbacks == 2 and len(calls) == 1
    assert parser.parse_batch(TEXTS + TEXTS[:1]) == [parse_instruction(text) for text in TEXTS + TEXTS[:1]]
    assert len(calls) == 1  # from the memory cache
    entries = [json.loads(path.read_text()) for path in tmp_path.glob("*.json")]
    assert sorted(entry["instruction"] for entry in entries) == sorted(TEXTS)
    assert all(entry["edit"] is None for entry in entries)  # the rules run again on read


def test_valid_replies_are_read_back_from_disk_without_the_model(tiny_lm_folder, tmp_path):
    first = llm(tiny_lm_folder, tmp_path)
    spy_generate(first, ['{"action": "remove", "source": "dog", "target": null}'])
    assert first.parse("get the dog out of here") == EditTuple("remove", "dog", None)
    second = llm(tiny_lm_folder, tmp_path)
    calls = spy_generate(second)
    assert second.parse("get the dog out of here") == EditTuple("remove", "dog", None)
    assert calls == [] and second.fallbacks == 0


def test_a_pickled_parser_loads_its_model_again_on_first_use(tiny_lm_folder, tmp_path):
    parser = llm(tiny_lm_folder, tmp_path)
    copy = pickle.loads(pickle.dumps(parser))
    assert copy.model is None and copy.cache.folder == str(tmp_path)
    copy.max_new_tokens = 2
    assert copy.parse("remove the dog") == parse_instruction("remove the dog")
    assert copy.model is not None


def test_a_model_that_cannot_load_warns_once_and_gives_the_rules(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sigma_fast.grounding.parsers"):
        parser = load_parser("llm", str(tmp_path / "missing"), cache_dir=None, device="cpu")
    assert parser is parse_instruction
    assert len(caplog.records) == 1 and "using the rule parser" in caplog.records[0].message
    assert load_parser("rules") is parse_instruction
    with pytest.raises(ValueError, match="parser must be one of"):
        load_parser("gpt")


@pytest.mark.parametrize("command", [["annotate", "--manifest", "m.jsonl", "--out", "o"],
                                     ["eval", "--manifest", "m.jsonl"],
                                     ["prior", "--input", "m.jsonl", "--out", "o"]])
def test_commands_hand_the_chosen_parser_on(command, tiny_lm_folder, tmp_path, monkeypatch):
    args = build_parser().parse_args(command + ["--parser", "llm", "--parser-model", str(tiny_lm_folder),
                                                "--device", "cpu"])
    assert (args.parser, args.parser_model) == ("llm", str(tiny_lm_folder))
    assert build_parser().parse_args(command).parser == "rules"
    if command[0] == "prior":
        return  # its run needs the grounding models; the option reaches the same load_parser_option
    captured = {}
    monkeypatch.setattr("sigma_fast.annotate.Annotator.from_pretrained", lambda *a, **kw: captured.update(kw))
    monkeypatch.setenv("HOME", str(tmp_path))
    load_annotator(args)
    assert isinstance(captured["parser"], LLMParser)
    assert captured["parser"].cache.folder == str(tmp_path / ".cache" / "sigma_fast" / "parses")


def test_train_option_sets_the_config_key(monkeypatch):
    captured = {}
    monkeypatch.setattr("sigma_fast.train.cli.command_train", lambda args: captured.setdefault("args", args))
    args = build_parser().parse_args(["train", "--stage", "1", "--config", "c.yaml", "--parser", "llm",
                                      "--parser-model", "a folder: with a colon"])
    args.run(args)
    assert captured["args"].overrides == ['data.parser="llm"', 'data.parser_model="a folder: with a colon"']
    assert build_parser().parse_args(["train", "--stage", "1", "--config", "c.yaml"]).parser is None


def test_training_parses_with_the_llm_and_caches_in_the_run(tiny_encoders, tiny_lm_folder, tmp_path, monkeypatch):
    train_path = write_parquet(tmp_path / "train.parquet", 8, seed=0)
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_encoders, str(run), train_path)
    overrides.update({"data.parser": "llm", "data.parser_model": str(tiny_lm_folder), "optim.steps": 2,
                      "data.workers": 0})
    config = load_train_config(str(CONFIGS / "tiny_stage1.yaml"), stage=1, overrides=overrides)
    seen = []
    real = LLMParser.parse_batch
    monkeypatch.setattr(LLMParser, "parse_batch", lambda self, texts: seen.append(list(texts)) or real(self, texts))
    monkeypatch.setattr(LLMParser, "generate", lambda self, texts: ["not json"] * len(texts))
    train(config, progress=False)
    assert seen and all(batch for batch in seen)
    assert list((run / "parses").glob("*.json"))
    with pytest.raises(ValueError, match="data.parser: must be one of"):
        load_train_config(str(CONFIGS / "tiny_stage1.yaml"), stage=1, overrides={**overrides, "data.parser": "gpt"})
