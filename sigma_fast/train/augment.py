"""Strong augmentation of an editing pair for the EMA student.

Each pair draws one set of parameters, applied identically to both images, so a pixel that did
not change between them still does not change; the geometric part is also applied to the
pseudo-label and its confidence weight (nearest neighbour), and pixels moved in from outside
the frame get weight 0. The (g, g) spatial prior moves with the pixels too (bilinear at its own
grid; cells moved in from outside the frame get 1, the flat prior's "anywhere", so a flat prior
stays flat). Then, for a share of the pairs, the edited image alone is saved again as
an editor's pipeline may save it (resampled down and up, JPEG): a change everywhere that is not an
edit, so the student learns to give the teacher's mask through it.
"""
import math

import torch
import torch.nn.functional as F

from sigma_fast.train.data import jpeg_reencode


def _uniform(generator, count, low, high):
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64).float()


def photometric(images, config, generator):
    """images (2, B, 3, S, S) float in [0, 1] (original, edited) -> same, one jitter per pair."""
    count = images.shape[1]
    shape = (1, count, 1, 1, 1)
    brightness = _uniform(generator, count, -config.brightness, config.brightness).view(shape)
    contrast = _uniform(generator, count, 1 - config.contrast, 1 + config.contrast).view(shape)
    saturation = _uniform(generator, count, 1 - config.saturation, 1 + config.saturation).view(shape)
    device = images.device
    reference = images[0].mean((1, 2, 3)).view(shape).to(device)  # the original's mean, used for both
    images = (images - reference) * contrast.to(device) + reference + brightness.to(device)
    grey = (0.299 * images[:, :, :1] + 0.587 * images[:, :, 1:2] + 0.114 * images[:, :, 2:3])
    images = grey + (images - grey) * saturation.to(device)
    if config.noise_std:
        noise = torch.randn(images.shape[1:], generator=generator) * config.noise_std
        images = images + noise.to(device)[None]
    return images.clamp(0, 1)


def affine_matrices(count, config, generator):
    """(B, 2, 3) sampling grids' affine maps: flip, rotation, scale and translation per pair."""
    angle = _uniform(generator, count, -config.rotate_degrees, config.rotate_degrees) * math.pi / 180
    scale = _uniform(generator, count, config.scale[0], config.scale[1])
    flip = torch.where(torch.rand(count, generator=generator) < config.hflip, -1.0, 1.0)
    shift = _uniform(generator, 2 * count, -config.translate, config.translate).view(count, 2) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], -1),
                        torch.stack([sin * flip, cos, shift[:, 1]], -1)], 1)


def resave(edited, config, generator):
    """uint8 (B, S, S, 3) edited images -> the same, each with probability `config.resave`
    resampled by a factor in `config.resave_scale` (antialiased down, bilinear up) and JPEG-encoded
    at a quality in `config.resave_quality`."""
    count, size = edited.shape[0], edited.shape[1]
    chosen = torch.rand(count, generator=generator) < config.resave
    scales = _uniform(generator, count, *config.resave_scale)
    low, high = config.resave_quality
    qualities = torch.randint(low, high + 1, (count,), generator=generator)
    images = []
    for image, resaved, scale, quality in zip(edited, chosen.tolist(), scales.tolist(), qualities.tolist()):
        if resaved:
            x = image.permute(2, 0, 1)[None].float()
            small = max(1, round(size * scale))
            x = F.interpolate(x, size=(small, small), mode="bilinear", antialias=True, align_corners=False)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            image = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
            image = jpeg_reencode(image.cpu(), quality).to(edited.device)
        images.append(image)
    return torch.stack(images)


def warp_prior(prior, theta):
    """prior (B, g, g) in [0, 1], theta (B, 2, 3) -> the prior moved as the images are."""
    grid = F.affine_grid(theta, (prior.shape[0], 1, *prior.shape[1:]), align_corners=False)
    # warped as (prior - 1) with zero padding: what comes in from outside the frame is 1
    moved = F.grid_sample(prior[:, None].float() - 1, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return (moved[:, 0] + 1).clamp(0, 1)


def augment_pairs(original, edited, label, weight, prior, config, generator):
    """original, edited uint8 (B, S, S, 3); label, weight float (B, S, S); prior float (B, g, g) ->
    the same, augmented. `generator` is a CPU torch.Generator: the draws do not depend on the device."""
    count, size = original.shape[0], original.shape[1]
    device = original.device
    images = torch.stack([original, edited]).permute(0, 1, 4, 2, 3).float() / 255.0  # (2, B, 3, S, S)
    images = photometric(images, config, generator)
    theta = affine_matrices(count, config, generator).to(device)
    grid = F.affine_grid(theta, (count, 1, size, size), align_corners=False)
    warped = [F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) for x in images]
    maps = torch.stack([label, weight, torch.ones_like(weight)], 1)  # (B, 3, S, S)
    maps = F.grid_sample(maps, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    images = torch.stack(warped).mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2)
    edited = resave(images[1].contiguous(), config, generator) if config.resave else images[1].contiguous()
    return images[0].contiguous(), edited, maps[:, 0], maps[:, 1] * maps[:, 2], warp_prior(prior, theta)
