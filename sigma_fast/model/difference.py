"""Difference branch: multi-tap semantic differencing of the two images' backbone tokens."""
import torch
from torch import nn

from sigma_fast import kernels

MIN_NOISE_STD = 1e-3  # channels that never vary on noise-only pairs must not blow up the whitening


class DifferenceBranch(nn.Module):
    """Per tap l: d_l = [|o - e|, o * e, 1 - cos(o, e)] on LayerNormed tokens, whitened by the
    noise statistics (identity until calibrated), projected to `dim` and summed over taps.
    Runs as one fused op (`sigma_fast.kernels.feature_diff`)."""

    def __init__(self, channels, num_taps, dim):
        super().__init__()
        features = 2 * channels + 1
        self.weight = nn.Parameter(torch.randn(num_taps, features, dim) * (num_taps * features) ** -0.5)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("noise_mean", torch.zeros(num_taps, features))
        self.register_buffer("noise_std", torch.ones(num_taps, features))
        self.register_buffer("calibrated", torch.tensor(False))

    def set_noise_stats(self, mean, std):
        """Store the whitening statistics measured on noise-only pairs (`feature_diff_stats`)."""
        if mean.shape != self.noise_mean.shape or std.shape != self.noise_std.shape:
            raise ValueError(f"noise stats must be {tuple(self.noise_mean.shape)}, "
                             f"got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.noise_mean.copy_(mean)
        self.noise_std.copy_(std.clamp_min(MIN_NOISE_STD))
        self.calibrated.fill_(True)

    def forward(self, f_orig, f_edit):
        # L x (B, N, C), L x (B, N, C) -> (B, N, dim)
        if bool(self.calibrated):
            return kernels.feature_diff(f_orig, f_edit, self.weight, self.bias, self.noise_mean, self.noise_std)
        return kernels.feature_diff(f_orig, f_edit, self.weight, self.bias)
