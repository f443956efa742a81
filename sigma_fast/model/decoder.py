"""Mask decoder: token grid up to full resolution, sharpened by a per-pixel colour-difference cue."""
import torch
import torch.nn.functional as F
from torch import nn


def conv_block(in_channels, out_channels):
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.GroupNorm(groups, out_channels), nn.GELU())


class MaskDecoder(nn.Module):
    """(B, N, in_dim) tokens on a g x g grid -> conv stem -> x2 upsampling stages -> bilinear to
    the input size, fused there with features of |x_orig - x_edit| (3 channels plus their mean),
    -> 1-channel logits at the input size."""

    def __init__(self, in_dim, channels=(128, 64, 32), cue_channels=16):
        super().__init__()
        self.stem = conv_block(in_dim, channels[0])
        self.stages = nn.ModuleList(conv_block(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.cue = conv_block(4, cue_channels)
        self.fuse = conv_block(channels[-1] + cue_channels, cue_channels)
        self.head = nn.Conv2d(cue_channels, 1, 1)

    def forward(self, tokens, grid, x_orig, x_edit):
        # tokens (B, g*g, in_dim), x_orig/x_edit (B, 3, S, S) -> logits (B, 1, S, S)
        x = self.stem(tokens.transpose(1, 2).unflatten(-1, (grid, grid)))
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        size = x_edit.shape[-2:]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        colour_diff = (x_orig - x_edit).abs().to(x.dtype)
        cue = self.cue(torch.cat([colour_diff, colour_diff.mean(1, keepdim=True)], dim=1))
        return self.head(self.fuse(torch.cat([x, cue], dim=1)))
