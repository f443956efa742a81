"""Text side: a frozen CLIP text tower whose tokens are projected to the head's width."""
import torch
from torch import nn

SEGMENTS = ("instruction", "source", "target")


class TextEncoder(nn.Module):
    """Encodes the instruction and the parsed source and target concepts as three padded
    segments of `max_tokens` tokens each, concatenated: (B, 3 * max_tokens, dim), with a mask.

    A missing concept (None, e.g. the source of an `add`) is a fully masked segment; the
    instruction segment always has its start and end tokens, so no row is entirely masked.
    """

    def __init__(self, model, tokenizer, dim, max_tokens):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.model.requires_grad_(False)
        self.model.eval()
        self.proj = nn.Linear(model.config.hidden_size, dim)
        self.segment = nn.Embedding(len(SEGMENTS), dim)

    @classmethod
    def from_pretrained(cls, name_or_path, dim, max_tokens, dtype=None):
        from transformers import AutoTokenizer, CLIPTextModel

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = CLIPTextModel.from_pretrained(name_or_path, dtype=dtype or torch.float32)
        return cls(model, tokenizer, dim, max_tokens)

    def train(self, mode=True):
        super().train(mode)
        self.model.eval()  # frozen tower
        return self

    def tokenize(self, texts, present, device):
        batch = self.tokenizer([text or "" for text in texts], padding="max_length", truncation=True,
                               max_length=self.max_tokens, return_tensors="pt")
        mask = batch["attention_mask"].bool() & torch.tensor(present)[:, None]
        return batch["input_ids"].to(device), mask.to(device)

    def forward(self, instructions, sources, targets):
        # B strings (or None) each -> tokens (B, 3 * max_tokens, dim), mask (B, 3 * max_tokens) bool
        device = self.proj.weight.device
        batch = len(instructions)
        concepts = list(sources) + list(targets)
        present = [True] * batch + [bool(concept) for concept in concepts]
        ids, mask = self.tokenize(list(instructions) + concepts, present, device)
        with torch.no_grad():
            hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        tokens = self.proj(hidden.to(self.proj.weight.dtype))  # (3B, max_tokens, dim)
        segment_ids = torch.arange(len(SEGMENTS), device=device).repeat_interleave(batch)
        tokens = tokens + self.segment(segment_ids)[:, None, :]
        tokens = tokens.view(len(SEGMENTS), batch, self.max_tokens, -1).permute(1, 0, 2, 3).flatten(1, 2)
        mask = mask.view(len(SEGMENTS), batch, self.max_tokens).permute(1, 0, 2).flatten(1, 2)
        return tokens, mask
