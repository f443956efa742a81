"""Small randomly initialised encoders, built offline: for tests, CI and the embedded demo model.

They go through exactly the loading path of the real ones (`save_pretrained` here,
`from_pretrained` in the model), so nothing about them is special-cased.
"""
import os
import re
from dataclasses import dataclass

import torch

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
BASE_VOCABULARY = (
    "a an the of to in on at with and or from into for by it its this that is be as up off out "
    "add put place insert give let wear there should remove delete erase get rid take replace swap "
    "turn change make paint colour color red green blue yellow black white orange purple pink brown "
    "gray grey big small left right top bottom center middle background sky sun snow rain winter "
    "summer night day style look like photo image picture object ball square circle star triangle "
    "cat dog car tree house person man woman hat glasses"
).split()


@dataclass
class TinyEncoderSpec:
    image_size: int = 56
    patch_size: int = 14
    backbone_hidden: int = 32
    backbone_layers: int = 3
    backbone_heads: int = 2
    text_hidden: int = 32
    text_layers: int = 1
    text_heads: int = 2
    max_text_tokens: int = 16
    seed: int = 0


def words_of(texts):
    return sorted({word for text in texts for word in re.findall(r"[a-z]+", text.lower())})


def build_word_tokenizer(vocabulary):
    """A lower-casing word-level tokenizer with <s> ... </s> framing and <unk> for unseen words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [w for w in dict.fromkeys(list(SPECIAL_TOKENS) + list(vocabulary))]
    core = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", words.index("<s>")), ("</s>", words.index("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def build_tiny_encoders(folder, spec: TinyEncoderSpec = None, vocabulary=()):
    """Write a tiny DINOv2 to `folder/backbone` and a tiny CLIP text tower with its tokenizer to
    `folder/text_encoder`; returns the two paths."""
    from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

    spec = spec or TinyEncoderSpec()
    torch.manual_seed(spec.seed)
    backbone = Dinov2Model(Dinov2Config(
        hidden_size=spec.backbone_hidden, num_hidden_layers=spec.backbone_layers,
        num_attention_heads=spec.backbone_heads, mlp_ratio=2, image_size=spec.image_size,
        patch_size=spec.patch_size))
    tokenizer = build_word_tokenizer(list(BASE_VOCABULARY) + list(vocabulary))
    text_model = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=spec.text_hidden, intermediate_size=2 * spec.text_hidden,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.max_text_tokens, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    backbone_dir = os.path.join(folder, "backbone")
    text_dir = os.path.join(folder, "text_encoder")
    backbone.save_pretrained(backbone_dir)
    text_model.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return backbone_dir, text_dir


def tiny_sigma_config(backbone_dir, text_dir, spec: TinyEncoderSpec = None, **overrides):
    """A SigmaConfig for the tiny encoders: every tapped layer, a narrow head."""
    from sigma_fast.config import SigmaConfig

    spec = spec or TinyEncoderSpec()
    values = dict(backbone=backbone_dir, text_encoder=text_dir, taps=tuple(range(1, spec.backbone_layers + 1)),
                  image_size=spec.image_size, max_text_tokens=spec.max_text_tokens, dim=32, refine_layers=2,
                  refine_heads=4, decoder_channels=(32, 16, 8), cue_channels=8)
    values.update(overrides)
    return SigmaConfig(**values)
