"""Mask decoder: token grid up to full resolution, sharpened by a per-pixel colour-difference cue."""
import math

import torch
import torch.nn.functional as F
from torch import nn


NOISE_FLOOR_QUANTILE = 0.9  # edits cover less than a tenth of most images: below this quantile lies noise
EXCESS_SATURATION = 0.05  # about 3 grey levels in ImageNet-normalised units


def floor_excess(change):
    """(B, 1, S, S) mean colour change -> where it stands above the image's own noise floor (its
    NOISE_FLOOR_QUANTILE, `torch.quantile`'s "lower" value), scaled to saturate at 1 within
    EXCESS_SATURATION.

    Why: every conv block normalises each image over its pixels (GroupNorm), so the absolute level
    of change is lost, and the faint change of an edit on an untouched image (an inpainted fill)
    looks like the whole-image noise an editor's VAE leaves. On an untouched image the floor is 0
    and every changed pixel saturates; on a re-saved one only what stands above the noise does.
    kthvalue, not quantile: quantile refuses inputs of more than 2**24 elements (a batch at 518 px)."""
    change32 = change.float()
    flat = change32.flatten(1)
    rank = math.floor(NOISE_FLOOR_QUANTILE * (flat.shape[1] - 1)) + 1
    floor = flat.kthvalue(rank, dim=1).values[:, None, None, None]
    return ((change32 - floor) / EXCESS_SATURATION).clamp(0, 1).to(change.dtype)


def conv_block(in_channels, out_channels):
    groups = 8 if out_channels % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.GroupNorm(groups, out_channels), nn.GELU())


class MaskDecoder(nn.Module):
    """(B, N, in_dim) tokens on a g x g grid -> conv stem -> x2 upsampling stages -> bilinear to
    the input size, fused there with features of |x_orig - x_edit| (3 channels plus their mean,
    and with `noise_floor_cue` a fifth: `floor_excess`), -> 1-channel logits at the input size.

    The fusion conv is defined on `cat(x, cue)` (its weight, the checkpoint key `fuse.0.weight`,
    is (out, channels[-1] + cue_channels, 3, 3)) but computed as `conv_x(x) + conv_cue(cue)` with
    the weight split along input channels: the same sum, without writing and re-reading the
    full-resolution concatenation.

    `channels_last`: run the convolutions in channels-last layout (cuDNN's tensor-core paths for
    bf16); None means on CUDA tensors only. A plain attribute, not part of the checkpoint.
    """

    def __init__(self, in_dim, channels=(128, 64, 32), cue_channels=16, noise_floor_cue=True):
        super().__init__()
        self.noise_floor_cue = noise_floor_cue
        self.stem = conv_block(in_dim, channels[0])
        self.stages = nn.ModuleList(conv_block(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.cue = conv_block(5 if noise_floor_cue else 4, cue_channels)
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
        change = colour_diff.mean(1, keepdim=True)  # (B, 1, S, S)
        cues = [colour_diff, change]
        if self.noise_floor_cue:
            cues.append(floor_excess(change))
        cue = self.cue(arrange(torch.cat(cues, dim=1)))  # (B, cue, S, S)
        conv, norm, act = self.fuse
        split = x.shape[1]
        fused = (F.conv2d(x, conv.weight[:, :split], padding=1)
                 + F.conv2d(arrange(cue), conv.weight[:, split:], padding=1))  # (B, cue, S, S)
        return self.head(act(norm(fused)))
