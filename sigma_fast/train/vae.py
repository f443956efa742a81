"""Stage II, VAE round-trip noise calibration.

A diffusion editor saves images through its VAE, so even unedited pixels change. Three uses of the
same round trip (encode -> scale/shift -> optional latent noise -> decode):
- noise-only pairs: (original, round trip of the original), target all zero;
- composites: the edited image pasted onto the round trip inside the edit mask
  (`sigma_fast.ops.vae_roundtrip_composite`), target the edit mask;
- calibration: `sigma_fast.kernels.feature_diff_stats` of noise-only pairs' backbone taps become
  the difference branch's whitening statistics (`set_noise_stats`), stored in the checkpoint.
"""
import contextlib

import torch
import torch.nn.functional as F

from sigma_fast import kernels, ops

VAE_MULTIPLE = 8  # AutoencoderKL downsamples by 8: pad to a multiple


class VaeRoundTrip:
    def __init__(self, vae, scale, shift, latent_noise=0.0):
        self.vae = vae.eval().requires_grad_(False)
        self.scale, self.shift, self.latent_noise = scale, shift, latent_noise

    @classmethod
    def from_config(cls, config, device):
        """diffusers' AutoencoderKL from a hub id or folder; scale/shift default to its config's."""
        from sigma_fast.errors import require
        from sigma_fast.model.sigma import load_encoder

        diffusers = require("diffusers", "train", "Stage II's VAE round trip (stage2.vae)")
        # low_cpu_mem_usage=False: no "install accelerate" notice; the VAE is small next to its activations
        kwargs = {"subfolder": config.subfolder, "low_cpu_mem_usage": False} if config.subfolder else \
            {"low_cpu_mem_usage": False}
        vae = load_encoder("VAE (stage2.vae.model)", config.model,
                           lambda ref: diffusers.AutoencoderKL.from_pretrained(ref, **kwargs)).to(device)
        scale = config.scale if config.scale is not None else vae.config.scaling_factor
        shift = config.shift if config.shift is not None else (getattr(vae.config, "shift_factor", None) or 0.0)
        return cls(vae, float(scale), float(shift), config.latent_noise)

    @torch.no_grad()
    def decode_roundtrip(self, images, generator=None):
        """uint8 (B, H, W, 3) -> the VAE's reconstruction (B, 3, H, W), float in about [-1, 1]."""
        device = next(self.vae.parameters()).device
        x = images.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % VAE_MULTIPLE, -width % VAE_MULTIPLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = x.to(self.vae.dtype)
        latent = (self.vae.encode(x).latent_dist.mode() - self.shift) * self.scale
        if self.latent_noise:
            noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(latent)
            latent = latent + self.latent_noise * noise
        decoded = self.vae.decode(latent / self.scale + self.shift).sample
        return decoded[..., :height, :width].float()

    def roundtrip(self, images, generator=None):
        """uint8 (B, H, W, 3) -> uint8 round trip, saved as an editor would."""
        return ops.vae_roundtrip_composite(self.decode_roundtrip(images, generator))


def make_vae_pairs(batch, vae, noise_fraction, composite_fraction, generator):
    """Turn part of a labelled batch (on its device) into noise-only pairs and composites, in place.

    Of the b samples, up to round(noise_fraction * b) whose instruction is not a global edit become
    (original, round trip) with an empty mask: a global instruction over a whole-image change is
    what a global edit looks like, so such a pair would teach the model to deny global edits.
    round(composite_fraction * b) of the other positives with a non-empty mask become
    (original, edited pasted on the round trip) with their mask; a global edit's composite is the
    round trip of its edited image, its mask still the whole image. One VAE pass serves both."""
    count = batch["original"].shape[0]
    order = torch.randperm(count, generator=generator).tolist()
    noise = [i for i in order if batch["edit"][i].action != "global"][:round(noise_fraction * count)]
    candidates = [i for i in order if i not in noise
                  and batch["kind"][i] == "positive" and bool(batch["mask"][i].any())]
    composite = candidates[:round(composite_fraction * count)]
    chosen = noise + composite
    if not chosen:
        return batch
    whole = [batch["edit"][i].action == "global" for i in chosen]
    # a global edit is the editor's output everywhere: its composite is the round trip of the edited image
    sources = torch.stack([batch["edited" if g else "original"][i] for i, g in zip(chosen, whole)])
    decoded = vae.decode_roundtrip(sources, generator)
    index = torch.tensor(chosen, device=batch["original"].device)
    mask = batch["mask"][index]
    mask[:len(noise)] = 0
    paste = mask * ~torch.tensor(whole, device=mask.device)[:, None, None]
    edited = ops.vae_roundtrip_composite(decoded, batch["edited"][index], paste).to(batch["edited"].device)
    batch["edited"][index] = edited
    batch["mask"][index] = mask
    for i in noise:
        batch["kind"][i] = "noise"
    for i in composite:
        batch["kind"][i] = "composite"
    return batch


@torch.no_grad()
def measure_noise_stats(model, vae, batches, reduce_sum=None, autocast=contextlib.nullcontext):
    """Whitening statistics of noise-only pairs: per tap and channel, the mean and std of the
    difference features d over all tokens of all `batches` (uint8 originals (B, S, S, 3)),
    pooled over batches (and over DDP ranks through `reduce_sum`). -> (L, 2C+1) each."""
    total = first = second = None
    size = model.config.image_size
    device = next(model.parameters()).device
    for originals in batches:
        roundtrip = vae.roundtrip(originals)
        x_orig, x_noise = ops.preprocess_pairs(list(originals.to(device)), list(roundtrip.to(device)), size=size)
        with autocast():
            taps = model.backbone(torch.cat([x_orig, x_noise]))
        count = originals.shape[0]
        mean, std = kernels.feature_diff_stats([t[:count] for t in taps], [t[count:] for t in taps])
        tokens = count * taps[0].shape[1]
        mean, square = mean.double() * tokens, (std.double() ** 2 + mean.double() ** 2) * tokens
        if total is None:
            total, first, second = torch.tensor(0.0, dtype=torch.float64, device=mean.device), mean, square
        else:
            first, second = first + mean, second + square
        total = total + tokens
    if total is None:
        raise ValueError("calibration needs at least one batch of originals")
    if reduce_sum is not None:
        total, first, second = reduce_sum(total), reduce_sum(first), reduce_sum(second)
    mean = first / total
    std = (second / total - mean ** 2).clamp_min(0).sqrt()
    return mean.float(), std.float()


@torch.no_grad()
def calibrate(difference, mean, std):
    """Install the whitening statistics and re-express the projection so that the branch computes
    the same function as before: with d' = (d - mean) / std, weight' = std * W_raw and
    bias' = bias_raw + sum_l mean_l @ W_raw_l, where (W_raw, bias_raw) act on unwhitened d.
    Training then continues in whitened coordinates without a jump in the loss."""
    weight_raw = difference.weight / difference.noise_std[..., None]  # (L, F, D)
    bias_raw = difference.bias - torch.einsum("lf,lfd->d", difference.noise_mean, weight_raw)
    difference.set_noise_stats(mean.to(difference.noise_mean), std.to(difference.noise_std))
    difference.weight.copy_(weight_raw * difference.noise_std[..., None])
    difference.bias.copy_(bias_raw + torch.einsum("lf,lfd->d", difference.noise_mean, weight_raw))
