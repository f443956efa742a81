"""Our DINOv2 ViT forward: the same function as Hugging Face's `Dinov2Model` up to the deepest tap,
built for throughput.

- one qkv GEMM per block (HF's q, k, v weights concatenated once at load);
- attention through the backend measured fastest on the card (`sigma_fast.model.attention`);
- every block boundary `x = x + gamma * y; h = LayerNorm(x)` is one fused pass
  (`kernels.residual_layer_norm`), and the next block's first LayerNorm is computed there too;
- fc1's bias + GELU and proj/fc2's bias + LayerScale + residual can run in Triton GEMM epilogues
  (`kernels.linear_gelu`, `kernels.linear_residual`); whether the Triton GEMMs or cuBLAS plus the
  fused boundary pass is faster is measured per shape on the card (`sigma_fast.model.autotune`);
- the position embedding interpolated to the input size is computed once per size and kept;
- `quantize_fp8()` switches the GEMMs to FP8 (e4m3 weights with per-output-channel scales,
  per-token activation scales, quantisation fused into the LayerNorm and GELU passes), attention
  stays in bf16.
The backbone is frozen: the forward runs without autograd and without autocast, in the dtype of
its weights (training in bf16 holds the backbone in bf16).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sigma_fast import kernels
from sigma_fast.model import attention, autotune

SUPPORTED_BACKBONES = ("dinov2", "dinov2_with_registers")
FP8 = torch.float8_e4m3fn
# Transformers 4.x named the attention and SwiGLU weights differently; both spellings load.
DEFAULT_PLAN = {"attention": "sdpa", "fc1": "torch", "residual": "torch"}
LEGACY_NAMES = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
                "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}


@dataclass
class ViTConfig:
    """The shape of a DINOv2 backbone, read off its Hugging Face config."""

    hidden_size: int
    num_layers: int  # layers this forward runs: the deepest tap
    num_heads: int
    mlp_hidden: int
    patch_size: int
    pos_grid: int  # the pretrained position embedding covers pos_grid x pos_grid patches
    num_register_tokens: int = 0
    layer_norm_eps: float = 1e-6
    swiglu: bool = False
    pos_antialias: bool = False  # DINOv2-with-registers interpolates its positions with antialiasing

    @classmethod
    def from_hf(cls, config, num_layers):
        if config.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(f"backbone must be one of {SUPPORTED_BACKBONES}, got {config.model_type!r}")
        if getattr(config, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"only exact-GELU DINOv2 MLPs are supported, got hidden_act={config.hidden_act!r}")
        hidden = int(config.hidden_size * config.mlp_ratio)
        if config.use_swiglu_ffn:
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return cls(hidden_size=config.hidden_size, num_layers=num_layers, num_heads=config.num_attention_heads,
                   mlp_hidden=hidden, patch_size=config.patch_size, pos_grid=config.image_size // config.patch_size,
                   num_register_tokens=getattr(config, "num_register_tokens", 0),
                   layer_norm_eps=config.layer_norm_eps, swiglu=bool(config.use_swiglu_ffn),
                   pos_antialias=config.model_type == "dinov2_with_registers")


class Fp8Weight(nn.Module):
    """An nn.Linear's weight in e4m3 with one fp32 scale per output channel, and its bias."""

    def __init__(self, linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).clamp_min(1e-12) / torch.finfo(FP8).max  # (N,)
        self.register_buffer("weight", (weight / scale[:, None]).to(FP8))  # (N, K)
        self.register_buffer("scale", scale[None, :].contiguous())  # (1, N)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x_fp8, x_scale):
        # (M, K) e4m3, (M, 1) fp32 -> (M, N) bf16
        return torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scale, scale_b=self.scale, bias=self.bias,
                                out_dtype=torch.bfloat16)


class Block(nn.Module):
    """One pre-norm transformer block; its first LayerNorm is applied by the previous boundary."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.num_heads = config.num_heads
        self.swiglu = config.swiglu
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.gamma1 = nn.Parameter(torch.ones(width))
        self.norm2 = nn.LayerNorm(width, eps=eps)
        # SwiGLU: fc1 holds the gate and up projections stacked, as DINOv2's weights_in.
        self.fc1 = nn.Linear(width, (2 if config.swiglu else 1) * config.mlp_hidden)
        self.fc2 = nn.Linear(config.mlp_hidden, width)
        self.gamma2 = nn.Parameter(torch.ones(width))
        self.fp8 = None  # name -> Fp8Weight once quantize_fp8() ran

    def quantize_fp8(self):
        self.fp8 = nn.ModuleDict({name: Fp8Weight(getattr(self, name)) for name in ("qkv", "proj", "fc1", "fc2")})

    def _attend(self, h, backend):
        # (B, T, C) -> (B, T, C) attention output before proj
        qkv = F.linear(h, self.qkv.weight, self.qkv.bias)
        return attention.attention(qkv.unflatten(-1, (3, self.num_heads, -1)), backend)

    def _mlp_hidden(self, h, plan):
        # (B, T, C) -> (B, T, mlp_hidden)
        if self.swiglu:
            gate, up = F.linear(h, self.fc1.weight, self.fc1.bias).chunk(2, dim=-1)
            return F.silu(gate) * up
        if plan["fc1"] == "triton":
            return kernels.linear_gelu(h, self.fc1.weight, self.fc1.bias)
        return F.gelu(F.linear(h, self.fc1.weight, self.fc1.bias))

    def _add_branch(self, x, branch, linear, gamma, norm, plan):
        """x + gamma * linear(branch), and norm of it (None without a norm): (B, T, C) each."""
        if plan["residual"] == "triton":
            x = kernels.linear_residual(branch, linear.weight, linear.bias, gamma, x)
            if norm is None:
                return x, None
            return x, kernels.residual_layer_norm(x, None, None, norm.weight, norm.bias, norm.eps)[1]
        y = F.linear(branch, linear.weight, linear.bias)
        if norm is None:
            return torch.addcmul(x, gamma, y), None
        return kernels.residual_layer_norm(x, y, gamma, norm.weight, norm.bias, norm.eps)

    def forward(self, x, h, next_norm, plan):
        # x, h = norm1(x): (B, T, C) -> x (B, T, C), next_norm(x) (B, T, C) or None
        x, h = self._add_branch(x, self._attend(h, plan["attention"]), self.proj, self.gamma1, self.norm2, plan)
        return self._add_branch(x, self._mlp_hidden(h, plan), self.fc2, self.gamma2, next_norm, plan)

    def forward_fp8(self, x, h8, next_norm, backend):
        # x (B, T, C) bf16, h8 = (norm1(x) e4m3 (B*T, C), scale (B*T, 1)) -> x, next h8 (or None)
        batch, tokens, width = x.shape
        qkv = self.fp8["qkv"](*h8).view(batch, tokens, 3, self.num_heads, -1)
        branch = kernels.quantize_fp8_rows(attention.attention(qkv, backend).flatten(0, 1))
        x, h8 = self._add_fp8(x, self.fp8["proj"](*branch), self.gamma1, self.norm2)
        if self.swiglu:
            gate, up = self.fp8["fc1"](*h8).chunk(2, dim=-1)
            hidden = kernels.quantize_fp8_rows(F.silu(gate) * up)
        else:
            hidden = kernels.quantize_fp8_rows(self.fp8["fc1"](*h8), apply_gelu=True)
        return self._add_fp8(x, self.fp8["fc2"](*hidden), self.gamma2, next_norm)

    @staticmethod
    def _add_fp8(x, y, gamma, norm):
        # x (B, T, C), y (B*T, C) -> x + gamma * y, and its norm quantised per token (or None)
        y = y.view_as(x)
        if norm is None:
            return torch.addcmul(x, gamma, y), None
        x, h_fp8, h_scale = kernels.residual_layer_norm_fp8(x, y, gamma, norm.weight, norm.bias, norm.eps)
        return x, (h_fp8.view(-1, x.shape[-1]), h_scale.view(-1, 1))


class DinoViT(nn.Module):
    """DINOv2 patch embedding and the first `config.num_layers` blocks; returns the hidden states
    after the tapped layers (1-based, HF's `hidden_states[i]`), prefix tokens included."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.patch_embed = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid ** 2, width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self._pos_cache = {}
        self._plans = {}
        self.plan_overrides = {}  # e.g. {"fc1": "triton"}: forces a step's implementation
        self.precision = "native"  # or "fp8" after quantize_fp8()
        self.requires_grad_(False)

    @classmethod
    def from_hf(cls, model, num_layers):
        """Our forward over the weights of a Hugging Face `Dinov2Model`/`Dinov2WithRegistersModel`."""
        if num_layers > model.config.num_hidden_layers:
            raise ValueError(f"tap {num_layers} is deeper than the backbone's {model.config.num_hidden_layers} layers")
        vit = cls(ViTConfig.from_hf(model.config, num_layers))
        vit.load_hf_state_dict(model.state_dict())
        return vit.to(next(model.parameters()).dtype)

    def load_hf_state_dict(self, state):
        """Copy the weights of a HF DINOv2 state dict (either naming; layers past ours ignored)."""
        state = {_modern_name(name): tensor for name, tensor in state.items()}
        take = lambda name: state[name]  # noqa: E731 - a KeyError names the missing weight
        mine = {"patch_embed.weight": take("embeddings.patch_embeddings.projection.weight"),
                "patch_embed.bias": take("embeddings.patch_embeddings.projection.bias"),
                "cls_token": take("embeddings.cls_token"),
                "register_tokens": state.get("embeddings.register_tokens", self.register_tokens),
                "pos_embed": take("embeddings.position_embeddings")}
        for index in range(self.config.num_layers):
            layer, block = f"encoder.layer.{index}.", f"blocks.{index}."
            for part in ("weight", "bias"):
                mine[block + "qkv." + part] = torch.cat([take(f"{layer}attention.{p}_proj.{part}") for p in "qkv"])
                mine[block + "proj." + part] = take(f"{layer}attention.o_proj.{part}")
                for norm in ("norm1", "norm2"):
                    mine[f"{block}{norm}.{part}"] = take(f"{layer}{norm}.{part}")
                if self.config.swiglu and f"{layer}mlp.weights_in.{part}" in state:  # transformers 4.x
                    mine[block + "fc1." + part] = take(f"{layer}mlp.weights_in.{part}")
                    mine[block + "fc2." + part] = take(f"{layer}mlp.weights_out.{part}")
                elif self.config.swiglu:
                    mine[block + "fc1." + part] = torch.cat([take(f"{layer}mlp.gate_proj.{part}"),
                                                             take(f"{layer}mlp.up_proj.{part}")])
                    mine[block + "fc2." + part] = take(f"{layer}mlp.down_proj.{part}")
                else:
                    mine[block + "fc1." + part] = take(f"{layer}mlp.fc1.{part}")
                    mine[block + "fc2." + part] = take(f"{layer}mlp.fc2.{part}")
            mine[block + "gamma1"] = take(f"{layer}layer_scale1.lambda1")
            mine[block + "gamma2"] = take(f"{layer}layer_scale2.lambda1")
        self.load_state_dict(mine)
        self._pos_cache.clear()

    def _apply(self, fn, *args, **kwargs):
        # Cached position embeddings and plans belong to the old device/dtype.
        self._pos_cache.clear()
        self._plans.clear()
        return super()._apply(fn, *args, **kwargs)

    def quantize_fp8(self):
        """Run the block GEMMs in FP8 (e4m3) from now on: needs a bf16 module on a CUDA GPU of
        compute capability 8.9 or newer (Ada, Hopper, Blackwell), or the CPU (emulated, for tests)."""
        device = self.pos_embed.device
        if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
            raise RuntimeError(f"FP8 needs a GPU of compute capability 8.9 or newer; "
                               f"{torch.cuda.get_device_name(device)} is {torch.cuda.get_device_capability(device)}")
        if self.pos_embed.dtype != torch.bfloat16:
            raise ValueError(f"quantize_fp8 needs the backbone in bfloat16 first, it is {self.pos_embed.dtype}")
        for block in self.blocks:
            block.quantize_fp8()
        self.precision = "fp8"

    def position_embedding(self, grid_h, grid_w):
        """(1, 1 + grid_h * grid_w, C): the pretrained positions, interpolated as HF does, once per size."""
        key = (grid_h, grid_w)
        if key not in self._pos_cache:
            pos = self.pos_embed
            grid = self.config.pos_grid
            if (grid_h, grid_w) != (grid, grid):
                patches = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2).float()
                patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False,
                                        antialias=self.config.pos_antialias).to(pos.dtype)
                pos = torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
            self._pos_cache[key] = pos.detach()
        return self._pos_cache[key]

    def embed(self, pixels):
        # (B, 3, H, W) -> (B, 1 + R + N, C)
        tokens = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (B, C, H/p, W/p)
        grid_h, grid_w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        batch = tokens.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(grid_h, grid_w)
        if self.config.num_register_tokens:
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(batch, -1, -1), tokens[:, 1:]], dim=1)
        return tokens

    def plan(self, x):
        """How each step runs for hidden states shaped like x: `plan_overrides` over the choices
        measured on the card once per shape and dtype (on the CPU: the PyTorch paths)."""
        key = (tuple(x.shape), x.dtype, self.precision)
        if key not in self._plans:
            if x.device.type == "cuda" and not torch.compiler.is_compiling():
                self._plans[key] = self._measure_plan(x)
            else:
                self._plans[key] = dict(DEFAULT_PLAN, attention=attention.backends(x.device)[0])
        return {**self._plans[key], **self.plan_overrides}

    def _measure_plan(self, x):
        block, (batch, tokens, width) = self.blocks[0], x.shape
        qkv = torch.randn(batch, tokens, 3, self.config.num_heads, width // self.config.num_heads,
                          device=x.device, dtype=x.dtype)
        if self.precision == "fp8":  # the FP8 GEMMs have one implementation: only attention is chosen
            return dict(DEFAULT_PLAN, attention=attention.choose_backend(qkv))
        h = torch.randn_like(x)
        hidden = torch.randn(batch, tokens, block.fc2.in_features, device=x.device, dtype=x.dtype)
        shape = f"{tuple(x.shape)}|{x.dtype}"
        fc1 = {"torch": lambda: F.gelu(F.linear(h, block.fc1.weight, block.fc1.bias))}
        residual = {"torch": lambda: kernels.residual_layer_norm(
            x, F.linear(hidden, block.fc2.weight, block.fc2.bias), block.gamma2, block.norm1.weight,
            block.norm1.bias, block.norm1.eps)}
        if kernels.use_triton(x.device):
            fc1["triton"] = lambda: kernels.linear_gelu(h, block.fc1.weight, block.fc1.bias)
            residual["triton"] = lambda: kernels.residual_layer_norm(
                kernels.linear_residual(hidden, block.fc2.weight, block.fc2.bias, block.gamma2, x), None, None,
                block.norm1.weight, block.norm1.bias, block.norm1.eps)
        return {"attention": attention.choose_backend(qkv),
                "fc1": autotune.choose(f"vit_fc1|{shape}|{block.fc1.out_features}", x.device, fc1),
                "residual": autotune.choose(f"vit_residual|{shape}|{block.fc2.in_features}", x.device, residual)}

    def forward(self, pixels, taps):
        # (B, 3, H, W), 1-based layer indices -> len(taps) x (B, 1 + R + N, C)
        # In the weights' own dtype: autocast would mix dtypes inside the fused boundary passes.
        with torch.no_grad(), torch.autocast(pixels.device.type, enabled=False):
            x = self.embed(pixels)
            plan = self.plan(x)
            first = self.blocks[0].norm1
            if self.precision == "fp8":
                _, h8, scale = kernels.residual_layer_norm_fp8(x, None, None, first.weight, first.bias, first.eps)
                h = (h8.view(-1, x.shape[-1]), scale.view(-1, 1))
            else:
                h = kernels.residual_layer_norm(x, None, None, first.weight, first.bias, first.eps)[1]
            outputs = []
            for index, block in enumerate(self.blocks, start=1):
                next_norm = self.blocks[index].norm1 if index < len(self.blocks) else None
                if self.precision == "fp8":
                    x, h = block.forward_fp8(x, h, next_norm, plan["attention"])
                else:
                    x, h = block(x, h, next_norm, plan)
                if index in taps:
                    outputs.append(x)
            return outputs


def _modern_name(name):
    for old, new in LEGACY_NAMES.items():
        name = name.replace(old, new)
    return name
