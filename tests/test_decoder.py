"""MaskDecoder: the split fusion (conv_x(x) + conv_cue(cue)) is the concatenation it replaced."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from sigma_fast.model.decoder import EXCESS_SATURATION, NOISE_FLOOR_QUANTILE, MaskDecoder, floor_excess

SIZES = {  # in_dim, channels, cue channels, grid, image size, batch
    "demo": (64, (32, 16, 8), 8, 8, 112, 3),
    "base_shaped": (512, (128, 64, 32), 16, 10, 140, 2),
}


def concatenated_forward(decoder, tokens, grid, x_orig, x_edit):
    """The original formulation: `fuse(cat(x, cue))` at full resolution, NCHW (the oracle)."""
    x = decoder.stem(tokens.transpose(1, 2).unflatten(-1, (grid, grid)))
    for stage in decoder.stages:
        x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    x = F.interpolate(x, size=x_edit.shape[-2:], mode="bilinear", align_corners=False)
    colour_diff = (x_orig - x_edit).abs().to(x.dtype)
    change = colour_diff.mean(1, keepdim=True)
    cues = [colour_diff, change]
    if decoder.noise_floor_cue:
        floor = torch.quantile(change.flatten(1), NOISE_FLOOR_QUANTILE, dim=1, interpolation="lower")
        cues.append(((change - floor[:, None, None, None]) / EXCESS_SATURATION).clamp(0, 1))
    cue = decoder.cue(torch.cat(cues, dim=1))
    return decoder.head(decoder.fuse(torch.cat([x, cue], dim=1)))


def decoder_and_inputs(size, seed=0, device="cpu", dtype=torch.float32, noise_floor_cue=True):
    in_dim, channels, cue, grid, image, batch = SIZES[size]
    torch.manual_seed(seed)
    decoder = MaskDecoder(in_dim, channels, cue, noise_floor_cue)
    for parameter in decoder.parameters():  # non-trivial norms and head, so every weight matters
        parameter.data.add_(0.1 * torch.randn_like(parameter))
    generator = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randn(batch, grid * grid, in_dim, generator=generator)
    x_orig, x_edit = torch.randn(2, batch, 3, image, image, generator=generator)
    tensors = [t.to(device=device, dtype=dtype) for t in (tokens, x_orig, x_edit)]
    return decoder.to(device=device, dtype=dtype), grid, tensors


def relative_error(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("noise_floor_cue", [True, False])
@pytest.mark.parametrize("size", sorted(SIZES))
def test_split_fusion_equals_concatenation(size, noise_floor_cue):
    decoder, grid, (tokens, x_orig, x_edit) = decoder_and_inputs(size, noise_floor_cue=noise_floor_cue)
    with torch.no_grad():
        logits = decoder(tokens, grid, x_orig, x_edit)
        expected = concatenated_forward(decoder, tokens, grid, x_orig, x_edit)
    assert logits.shape == (tokens.shape[0], 1) + x_edit.shape[-2:]
    assert relative_error(logits, expected) < 1e-5


@pytest.mark.parametrize("size", sorted(SIZES))
def test_channels_last_gives_the_same_logits(size):
    decoder, grid, (tokens, x_orig, x_edit) = decoder_and_inputs(size, seed=3)
    decoder.channels_last = True
    with torch.no_grad():
        logits = decoder(tokens, grid, x_orig, x_edit)
        expected = concatenated_forward(decoder, tokens, grid, x_orig, x_edit)
    assert relative_error(logits, expected) < 1e-4  # another summation order in the convolutions


def test_gradients_equal_the_concatenation():
    decoder, grid, (tokens, x_orig, x_edit) = decoder_and_inputs("demo", seed=5)
    tokens.requires_grad_(True)
    grads = []
    for forward in (decoder.forward, lambda *args: concatenated_forward(decoder, *args)):
        decoder.zero_grad()
        tokens.grad = None
        forward(tokens, grid, x_orig, x_edit).square().mean().backward()
        grads.append([tokens.grad.clone()] + [p.grad.clone() for p in decoder.parameters()])
    for new, old in zip(*grads):
        assert relative_error(new, old) < 1e-5


def test_floor_excess_marks_a_faint_edit_on_a_clean_image_and_drops_noise():
    """On an untouched image every changed pixel stands above the floor (0); on an image changed
    everywhere by an editor's faint noise, only what stands above the noise does."""
    noise = 0.5 * EXCESS_SATURATION * torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    clean, noisy = torch.zeros(1, 1, 20, 20), noise.clone()
    clean[..., :4, :4] = 0.2 * EXCESS_SATURATION  # a fill barely different from what it replaced
    noisy[..., :4, :4] = 0.2 + noise[..., :4, :4]  # an edit over the noise
    excess = floor_excess(torch.cat([clean, noisy]))
    assert excess.shape == (2, 1, 20, 20)
    torch.testing.assert_close(excess[0, 0, :4, :4], torch.full((4, 4), 0.2))
    assert excess[0, 0, 4:].abs().max() == 0 and excess[0, 0, :, 4:].abs().max() == 0
    assert excess[1, 0, :4, :4].min() == 1  # saturated
    assert (excess[1, 0, 4:] > 0).float().mean() < 0.1  # only the noise's top tenth passes, and barely
    assert excess[1, 0, 4:].max() < 0.5


def test_checkpoint_keys_unchanged():
    decoder = MaskDecoder(64, (32, 16, 8), 8, noise_floor_cue=False)
    shapes = {name: tuple(t.shape) for name, t in decoder.state_dict().items()}
    expected = {"stem.0.weight": (32, 64, 3, 3), "stem.1.weight": (32,), "stem.1.bias": (32,),
                "stages.0.0.weight": (16, 32, 3, 3), "stages.0.1.weight": (16,), "stages.0.1.bias": (16,),
                "stages.1.0.weight": (8, 16, 3, 3), "stages.1.1.weight": (8,), "stages.1.1.bias": (8,),
                "cue.0.weight": (8, 4, 3, 3), "cue.1.weight": (8,), "cue.1.bias": (8,),
                "fuse.0.weight": (8, 16, 3, 3), "fuse.1.weight": (8,), "fuse.1.bias": (8,),
                "head.weight": (1, 8, 1, 1), "head.bias": (1,)}
    assert shapes == expected


def test_embedded_demo_checkpoint_gives_the_same_masks():
    """The demo's trained decoder loads under the same keys and, on the demo's images (the colour
    cue) with tokens of the head's scale, gives the concatenation's logits and masks."""
    from safetensors.torch import load_file

    from sigma_fast.annotate import EMBEDDED_CHECKPOINT
    from sigma_fast.config import SigmaConfig
    from sigma_fast.demo import DEMO_PAIRS
    from sigma_fast.io.images import load_image

    config = SigmaConfig.load(EMBEDDED_CHECKPOINT)
    state = load_file(os.path.join(EMBEDDED_CHECKPOINT, "model.safetensors"))
    decoder = MaskDecoder(2 * config.dim, config.decoder_channels, config.cue_channels, config.noise_floor_cue)
    decoder.load_state_dict({k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")})
    with open(os.path.join(DEMO_PAIRS, "pairs.jsonl")) as handle:
        rows = [json.loads(line) for line in handle]

    def images(column):
        pixels = torch.stack([load_image(os.path.join(DEMO_PAIRS, row[column])) for row in rows])
        pixels = pixels.permute(0, 3, 1, 2).float() / 255
        return F.interpolate(pixels, size=(config.image_size, config.image_size), mode="bilinear")

    grid = config.image_size // 14
    tokens = torch.randn(len(rows), grid * grid, 2 * config.dim, generator=torch.Generator().manual_seed(0))
    x_orig, x_edit = images("original"), images("edited")
    with torch.no_grad():
        logits = decoder(tokens, grid, x_orig, x_edit)
        expected = concatenated_forward(decoder, tokens, grid, x_orig, x_edit)
    assert relative_error(logits, expected) < 1e-5
    decided = expected.abs() > 1e-4
    assert ((logits > 0) == (expected > 0))[decided].all()
    assert decided.float().mean() > 0.99


@pytest.mark.gpu
@pytest.mark.parametrize("size", sorted(SIZES))
def test_cuda_bf16_channels_last_matches_concatenation(size):
    decoder, grid, (tokens, x_orig, x_edit) = decoder_and_inputs(size, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        logits = decoder(tokens, grid, x_orig, x_edit)
        expected = concatenated_forward(decoder.float(), tokens.float(), grid, x_orig.float(), x_edit.float())
    assert relative_error(logits, expected) < 2e-2

