"""Difference branch: multi-tap semantic differencing of the two images' backbone tokens."""
import torch
from torch import nn

from sigma_fast import kernels

MIN_NOISE_STD = 1e-3  # channels that never vary on noise-only pairs must not blow up the whitening


class DifferenceBranch(nn.Module):
    """Per tap l: d_l = [|o - e|, o * e, 1 - cos(o, e)] on LayerNormed tokens, whitened by the
    noise statistics (identity until calibrated), projected to `dim` and summed over taps.
    Runs as one fused op (`sigma_fast.kernels.feature_diff`).

    `calibrated` is a Python bool, so the forward never reads a device flag (no host sync, CUDA
    graphs capture it); checkpoints still carry it as the bool tensor `calibrated`.

    Inference folds the whitening into the projection: `fold()` computes
    W'[l] = W[l] / std[l][:, None] and b' = b - sum_l (mean[l] / std[l]) @ W[l] once, and the
    forward in eval mode without grad uses (W', b') and reads no mean/std vectors. `eval()` folds;
    `train()`, `set_noise_stats` and loading drop or redo the fold, and in eager mode an in-place
    change of the weights or statistics since `fold()` (an optimiser step, an EMA update: their
    version counters move) sends the forward back to the unfolded path, so a stale fold is never
    used. The fold is plain attributes, not state: checkpoints hold only the unfolded parameters.
    """

    def __init__(self, channels, num_taps, dim):
        super().__init__()
        features = 2 * channels + 1
        self.weight = nn.Parameter(torch.randn(num_taps, features, dim) * (num_taps * features) ** -0.5)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("noise_mean", torch.zeros(num_taps, features))
        self.register_buffer("noise_std", torch.ones(num_taps, features))
        self.calibrated = False
        self.folded = None  # (W', b') while folded
        self._folded_from = None  # (data pointer, version) of weight, bias, noise_mean, noise_std at fold()

    def set_noise_stats(self, mean, std):
        """Store the whitening statistics measured on noise-only pairs (`feature_diff_stats`)."""
        if mean.shape != self.noise_mean.shape or std.shape != self.noise_std.shape:
            raise ValueError(f"noise stats must be {tuple(self.noise_mean.shape)}, "
                             f"got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.noise_mean.copy_(mean)
        self.noise_std.copy_(std.clamp_min(MIN_NOISE_STD))
        self.calibrated = True
        self._refold()

    def _sources(self):
        return self.weight, self.bias, self.noise_mean, self.noise_std

    def _source_versions(self):
        return tuple((t.data_ptr(), t._version) for t in self._sources())

    @torch.no_grad()
    def fold(self):
        """Fold the whitening into the projection for inference (nothing to fold if uncalibrated)."""
        if not self.calibrated:
            self.folded = self._folded_from = None
            return
        inv_std = 1.0 / self.noise_std.float()  # (L, F)
        weight = self.weight.float() * inv_std[..., None]  # (L, F, D)
        bias = self.bias.float() - torch.einsum("lf,lfd->d", self.noise_mean.float(), weight)
        self.folded = (weight.to(self.weight.dtype), bias.to(self.bias.dtype))
        self._folded_from = self._source_versions()

    def _refold(self):
        self.folded = self._folded_from = None
        if not self.training:
            self.fold()

    def _use_fold(self):
        if self.folded is None or self.training or torch.is_grad_enabled():
            return False
        # A compiled graph cannot read version counters; it is built after load, from a folded model.
        return torch.compiler.is_compiling() or self._source_versions() == self._folded_from

    def train(self, mode=True):
        super().train(mode)
        self._refold()
        return self

    def _apply(self, fn, *args, **kwargs):
        # .to(device / dtype) replaces the parameters: fold them again where they now live.
        super()._apply(fn, *args, **kwargs)
        if self.folded is not None:
            self.fold()
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "calibrated"] = torch.tensor(self.calibrated)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        key = prefix + "calibrated"
        if key in state_dict:
            self.calibrated = bool(state_dict[key])
            if key in unexpected_keys:
                unexpected_keys.remove(key)
        elif strict:
            missing_keys.append(key)
        self._refold()

    def forward(self, f_orig, f_edit):
        # L x (B, N, C), L x (B, N, C) -> (B, N, dim)
        if self._use_fold():
            return kernels.feature_diff(f_orig, f_edit, *self.folded)
        if self.calibrated:
            return kernels.feature_diff(f_orig, f_edit, self.weight, self.bias, self.noise_mean, self.noise_std)
        return kernels.feature_diff(f_orig, f_edit, self.weight, self.bias)
