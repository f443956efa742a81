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
    -> 1-channel logits at the input size.

    The fusion conv is defined on `cat(x, cue)` (its weight, the checkpoint key `fuse.0.weight`,
    is (out, channels[-1] + cue_channels, 3, 3)) but computed as `conv_x(x) + conv_cue(cue)` with
    the weight split along input channels: the same sum, without writing and re-reading the
    full-resolution concatenation.

    `channels_last`: run the convolutions in channels-last layout (cuDNN's tensor-core paths for
    bf16); None means on CUDA tensors only. A plain attribute, not part of the checkpoint.
    """

    def __init__(self, in_dim, channels=(128, 64, 32), cue_channels=16):
        super().__init__()
        self.stem = conv_block(in_dim, channels[0])
        self.stages = nn.ModuleList(conv_block(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.cue = conv_block(4, cue_channels)
        self.fuse = conv_block(channels[-1] + cue_channels, cue_channels)
        self.head = nn.Conv2d(cue_channels, 1, 1)
        self.channels_last = None

    def memory_format(self, tensor):
        use = tensor.is_cuda if self.channels_last is None else self.channels_last
        return torch.channels_last if use else torch.contiguous_format

    def forward(self, tokens, grid, x_orig, x_edit):
        # tokens (B, g*g, in_dim), x_orig/x_edit (B, 3, S, S) -> logits (B, 1, S, S)
        layout = self.memory_format(tokens)

        def arrange(x):
            # CUDA GroupNorm returns NCHW whatever its input: restore the layout before each conv
            return x.contiguous(memory_format=layout)

        x = self.stem(arrange(tokens.transpose(1, 2).unflatten(-1, (grid, grid))))  # (B, c0, g, g)
        for stage in self.stages:
            x = stage(F.interpolate(arrange(x), scale_factor=2, mode="bilinear", align_corners=False))
        x = F.interpolate(arrange(x), size=x_edit.shape[-2:], mode="bilinear", align_corners=False)  # (B, c, S, S)
        colour_diff = (x_orig - x_edit).abs().to(x.dtype)  # (B, 3, S, S)
        cue = self.cue(arrange(torch.cat([colour_diff, colour_diff.mean(1, keepdim=True)], dim=1)))  # (B, cue, S, S)
        conv, norm, act = self.fuse
        split = x.shape[1]
        fused = (F.conv2d(x, conv.weight[:, :split], padding=1)
                 + F.conv2d(arrange(cue), conv.weight[:, split:], padding=1))  # (B, cue, S, S)
        return self.head(act(norm(fused)))
