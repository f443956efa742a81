"""Plain PyTorch twins of the C++/CUDA ops in `sigma_fast._C`: the oracle in tests and the fallback."""
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_uint8_images(images, name):
    if len(images) == 0:
        raise ValueError(f"{name}: empty list of images")
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"{name}[{index}]: expected a torch.Tensor, got {type(image).__name__}")
        if image.dtype != torch.uint8:
            raise TypeError(f"{name}[{index}]: expected dtype uint8, got {image.dtype}")
        if image.dim() != 3 or image.shape[-1] != 3:
            raise ValueError(f"{name}[{index}]: expected shape (H, W, 3), got {tuple(image.shape)}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"{name}[{index}]: empty image of shape {tuple(image.shape)}")


def resize_normalize(image, size):
    # (H, W, 3) uint8 -> (3, size, size) float32, ImageNet-normalised
    x = image.permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


def check_pairs(originals, editeds):
    check_uint8_images(originals, "originals")
    check_uint8_images(editeds, "editeds")
    if len(originals) != len(editeds):
        raise ValueError(f"{len(originals)} originals but {len(editeds)} edited images")


def preprocess_pairs(originals, editeds, size=518, dtype=torch.float32):
    """Lists of uint8 (H_i, W_i, 3) -> (x_orig, x_edit), each (B, 3, size, size) in `dtype`."""
    check_pairs(originals, editeds)
    x_orig = torch.stack([resize_normalize(image, size) for image in originals]).to(dtype)
    x_edit = torch.stack([resize_normalize(image, size) for image in editeds]).to(dtype)
    return x_orig, x_edit


def check_logits_and_sizes(logits, sizes):
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be a (B, 1, h, w) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if len(sizes) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit maps but {len(sizes)} sizes")
    if logits.numel() == 0:
        raise ValueError(f"logits must not be empty, got shape {tuple(logits.shape)}")
    for height, width in sizes:
        if height <= 0 or width <= 0:
            raise ValueError(f"invalid output size {(height, width)}")


def mask_score(prob, mask):
    """Confidence of a binary mask: the mean probability inside it, or, for an empty mask,
    one minus the largest probability (how sure the model is that nothing changed)."""
    if mask.any():
        return prob[mask].mean()
    return 1.0 - prob.max()


def postprocess_masks(logits, sizes, threshold=0.5, return_probs=False):
    """(B, 1, h, w) logits -> per-image uint8 {0, 255} masks at (H_i, W_i) and scores (B,).

    Bilinear resize (align_corners=False) to each size, sigmoid, `> threshold`. With
    `return_probs`, the float32 probability maps come back as a third list.
    """
    check_logits_and_sizes(logits, sizes)
    masks, scores, probs = [], [], []
    for index, (height, width) in enumerate(sizes):
        resized = F.interpolate(logits[index:index + 1].float(), (int(height), int(width)),
                                mode="bilinear", align_corners=False)[0, 0]
        prob = torch.sigmoid(resized)
        positive = prob > threshold
        masks.append(positive.to(torch.uint8) * 255)
        scores.append(mask_score(prob, positive))
        probs.append(prob)
    scores = torch.stack(scores).float()
    return (masks, scores, probs) if return_probs else (masks, scores)


def check_composite(x_vae, x_edit, edit_mask):
    if x_vae.dim() != 4 or x_vae.shape[1] != 3:
        raise ValueError(f"x_vae must be (B, 3, H, W), got {tuple(x_vae.shape)}")
    if (x_edit is None) != (edit_mask is None):
        raise ValueError("x_edit and edit_mask go together")
    if x_edit is None:
        return
    shape = (x_vae.shape[0], x_vae.shape[2], x_vae.shape[3], 3)
    if x_edit.dtype != torch.uint8 or tuple(x_edit.shape) != shape:
        raise ValueError(f"x_edit must be uint8 {shape}, got {x_edit.dtype} {tuple(x_edit.shape)}")
    if tuple(edit_mask.shape) != shape[:3]:
        raise ValueError(f"edit_mask must be {shape[:3]}, got {tuple(edit_mask.shape)}")


def vae_roundtrip_composite(x_vae, x_edit=None, edit_mask=None):
    """VAE decoder output (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) as an editor saves it,
    with `x_edit` (uint8 (B, H, W, 3)) pasted where `edit_mask` (B, H, W) > 0.5."""
    check_composite(x_vae, x_edit, edit_mask)
    image = ((x_vae.float().clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    image = image.permute(0, 2, 3, 1).contiguous()
    if x_edit is None:
        return image
    return torch.where(edit_mask[..., None] > 0.5, x_edit, image)
