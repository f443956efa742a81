"""Our backbone with its Triton GEMM epilogues (the `triton` plan) against its PyTorch path.

On the CPU the Triton path runs only under TRITON_INTERPRET=1, as README's kernel test run does."""
import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from sigma_fast.model import DinoBackbone


def test_triton_plan_equals_torch_plan(triton_interpret):
    if not triton_interpret:
        pytest.skip("the Triton path runs on the CPU only under TRITON_INTERPRET=1")
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2,
                                     image_size=42, patch_size=14, layerscale_value=0.7))
    backbone = DinoBackbone(model, (1, 3))
    pixels = torch.randn(1, 3, 42, 42)
    expected = backbone(pixels)
    backbone.vit.plan_overrides.update(fc1="triton", residual="triton")
    for tokens, reference in zip(backbone(pixels), expected):
        assert ((tokens - reference).abs().max() / reference.abs().max()).item() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("plan", [dict(fc1="triton", residual="triton"), dict(fc1="torch", residual="torch")])
def test_plans_agree_on_gpu(plan):
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=5, num_attention_heads=12,
                                     image_size=518, patch_size=14, layerscale_value=0.7))
    backbone = DinoBackbone(model, (2, 5)).to(device="cuda", dtype=torch.bfloat16)
    pixels = torch.randn(2, 3, 518, 518, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        reference = DinoBackbone(model, (2, 5)).to(device="cuda", dtype=torch.float32)(pixels.float())
        backbone.vit.plan_overrides.update(plan)
        actual = backbone(pixels)
    for tokens, expected in zip(actual, reference):
        assert ((tokens.float() - expected).abs().max() / expected.abs().max()).item() < 2e-2
