"""Bidirectional cross-modal refinement between the visual difference stream and text tokens."""
import torch
import torch.nn.functional as F
from torch import nn

from sigma_fast import kernels

PRIOR_EPS = 1e-4  # floor of the prior inside its log, so a zero prior is a strong but finite bias


class BiAttentionBlock(nn.Module):
    """One shared logit matrix A = Q_v K_t^T / sqrt(d) drives both directions: the visual tokens
    attend over text (softmax over T), the text tokens attend over the visual grid (softmax over N
    with log-prior bias). The prior also gates the visual update:
    v = LN(v) + gamma_v * (1 + alpha * P) * dv.

    The visual query and value projections run as one GEMM, as do the text key and value ones
    (weights concatenated per call, so checkpoints keep the four separate Linear layers); the
    attention reads its heads straight out of those outputs and writes the visual result in
    (B, N, H*d) order.
    """

    def __init__(self, dim, heads, alpha=1.0, layer_scale_init=1e-4, mlp_ratio=4):
        super().__init__()
        self.heads = heads
        self.alpha = alpha
        self.norm_visual = nn.LayerNorm(dim)
        self.norm_text = nn.LayerNorm(dim)
        self.query_visual = nn.Linear(dim, dim)
        self.key_text = nn.Linear(dim, dim)
        self.value_visual = nn.Linear(dim, dim)
        self.value_text = nn.Linear(dim, dim)
        self.out_visual = nn.Linear(dim, dim)
        self.out_text = nn.Linear(dim, dim)
        self.gamma_visual = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.gamma_text = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.gamma_mlp = nn.Parameter(torch.full((dim,), layer_scale_init))

    def _paired_heads(self, x, first, second):
        # (B, L, dim) -> two (B, H, L, dim / H) views of one (B, L, 2 * dim) projection
        weight = torch.cat([first.weight, second.weight])
        bias = torch.cat([first.bias, second.bias])
        pair = F.linear(x, weight, bias).unflatten(-1, (2, self.heads, -1))  # (B, L, 2, H, dim / H)
        return pair[:, :, 0].transpose(1, 2), pair[:, :, 1].transpose(1, 2)

    def forward(self, visual, text, prior, text_mask):
        # visual (B, N, dim), text (B, T, dim), prior (B, N) in [0, 1], text_mask (B, T) bool
        visual = self.norm_visual(visual)
        text = self.norm_text(text)
        query_visual, value_visual = self._paired_heads(visual, self.query_visual, self.value_visual)
        key_text, value_text = self._paired_heads(text, self.key_text, self.value_text)
        out_visual, out_text = kernels.bi_attention(
            query_visual, key_text, value_visual, value_text,
            prior_bias=torch.log(prior.clamp_min(PRIOR_EPS)).to(visual.dtype),
            text_mask=text_mask,
        )
        # The fused kernel's out_visual is (B, N, H, d) memory: merging the heads is a free view.
        delta_visual = self.out_visual(out_visual.transpose(1, 2).flatten(2))
        delta_text = self.out_text(out_text.transpose(1, 2).flatten(2))
        gate = (1.0 + self.alpha * prior)[..., None].to(visual.dtype)
        visual = visual + self.gamma_visual * gate * delta_visual
        text = text + self.gamma_text * delta_text
        visual = visual + self.gamma_mlp * self.mlp(self.norm_mlp(visual))
        return visual, text
