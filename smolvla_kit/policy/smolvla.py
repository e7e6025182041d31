"""SmolVLA, top to bottom.

SmolVLA turns camera images, a task sentence and the robot's joint state into a *chunk* of
future actions (50 by default). It has two transformer stacks side by side:

    prefix tokens  = [camera 1 (64) | camera 2 (64) | ... | language (48) | state (1)]
                     ---> the VLM: SmolVLM's first 16 Llama layers (width 960)
    suffix tokens  = [noisy action 1 | ... | noisy action 50]
                     ---> the action expert: 16 smaller Llama layers (width 720)

Layer i of the expert runs together with layer i of the VLM. In even layers the two streams do
one *joint* self-attention over [prefix; suffix]; in odd layers the expert *cross-attends* to the
VLM layer's keys and values (re-projected 320 -> 320 to the expert's K/V space). The expert is a
flow-matching velocity field: starting from Gaussian noise at t=1, ten Euler steps carry the
actions to t=0. The prefix never looks at the suffix, so at inference the VLM runs once per chunk
and its keys/values are cached; each Euler step runs only the (small) expert.

Module names (`vlm_with_expert.vlm`, `vlm_with_expert.lm_expert`, `state_proj`, ...) match
LeRobot's, so LeRobot checkpoints load key for key. Reading order of this file:

1. building blocks: RoPE, attention, the block-causal mask, the time embedding; then SmolVLM's vision side
   (patch positions, SigLIP layers, pixel shuffle). transformers supplies the modules that hold the weights;
   every computation is written here, so the results do not depend on the installed transformers.
2. `SmolVLMWithExpert`: the two stacks and how their layers meet
3. `SmolVLAModel`: embedding the prefix/suffix, the flow-matching loss and the Euler sampler
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smolvla_kit.errors import InputError

from .config import VISION_POSITION_SCHEMES, SmolVLAConfig

# =============================================================================================
# 1. Building blocks
# =============================================================================================


def rope_tables(positions: Tensor, head_dim: int, max_wavelength: float) -> tuple[Tensor, Tensor]:
    """Rotary-embedding tables for integer `positions` (B, L) -> cos, sin, each (B, L, 1, D).

    SmolVLA uses its own RoPE (wavelength 10,000, not SmolLM2's 100,000), computed in float32 with
    the angle written as position / timescale, as in the reference. The tables are laid out so that
    `apply_rope` is two multiplies and an add: cos = [cos, cos], sin = [-sin, sin].
    """
    half = head_dim // 2
    freq_exponents = (2.0 / head_dim) * torch.arange(half, dtype=torch.float32, device=positions.device)
    timescale = max_wavelength**freq_exponents  # (D/2,)
    radians = positions[..., None].to(torch.float32) / timescale  # (B, L, D/2)
    cos, sin = torch.cos(radians), torch.sin(radians)
    return torch.cat([cos, cos], -1)[:, :, None], torch.cat([-sin, sin], -1)[:, :, None]  # broadcast over heads


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each head of x (B, L, H, D): first half x1*cos - x2*sin, second half x2*cos + x1*sin."""
    dtype = x.dtype
    x = x.float()
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([x2, x1], dim=-1) * sin).to(dtype)


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Llama's RMSNorm with the weights of `norm`: weight * (x / sqrt(mean(x^2) + eps)).

    Written here rather than calling the module so that its semantics do not depend on the installed
    transformers: the statistics are taken in float32 and the normalised value is cast back to x's dtype
    *before* the weight multiplies it (what transformers 4.x and 5.x do for Llama; other norms differ).
    """
    eps = norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps
    if x.dtype == torch.float32 and hasattr(F, "rms_norm"):  # the same sum, fused
        return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return norm.weight * normed.to(x.dtype)


def llama_mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    """Llama's gated MLP with the weights of `mlp`: down(silu(gate(x)) * up(x))."""
    return mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))


_SDPA_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


_autocast_available = getattr(torch.amp, "is_autocast_available", lambda d: d in ("cpu", "cuda"))  # torch < 2.4


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Leave any autocast region on this device (a no-op where autocast does not exist, e.g. "meta")."""
    return torch.autocast(device_type, enabled=False) if _autocast_available(device_type) else contextlib.nullcontext()


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Grouped-query attention with an additive mask; q (B, Lq, H, D), k/v (B, Lk, Hkv, D) -> (B, Lq, H*D).

    Scores are scaled by 1/sqrt(D), as in Llama. `bias` (B, 1, Lq, Lk) holds 0 where a query may look and the
    most negative float elsewhere (not -inf: a fully masked row, e.g. a padding token, then stays finite instead
    of NaN). Each group of H/Hkv query heads shares one key/value head (query head j uses K/V head j // group).
    """
    b, lq, h, d = q.shape
    groups = h // k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, D)
    # On a GPU in bfloat16 attention stays in bfloat16 so that SDPA's fused kernels run (they keep the softmax's
    # sums in float32 themselves). Everywhere else it runs in float32, also under bfloat16 autocast (training's
    # `mixed_precision`): the softmax wants the precision, and on CPUs the float32 kernel's backward is the faster.
    fused = q.device.type == "cuda" and q.dtype == torch.bfloat16
    if not fused:
        q, k, v = q.float(), k.float(), v.float()
    bias = bias.to(q.dtype)
    with contextlib.nullcontext() if fused else _autocast_off(q.device.type):
        if groups > 1 and _SDPA_HAS_GQA:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=d**-0.5, enable_gqa=True)
        else:
            if groups > 1:  # older torch: repeat each K/V head for its group of query heads
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=d**-0.5)  # (B, H, Lq, D)
    return out.transpose(1, 2).reshape(b, lq, h * d)


def block_causal_mask(pad_mask: Tensor, ar_flags: Tensor) -> Tensor:
    """Who sees whom: (B, N) padding mask + (B, N) block flags -> (B, N, N) bool, True = may attend.

    Token i sees token j iff cumsum(flags)[j] <= cumsum(flags)[i] and neither is padding. A flag of 1
    starts a new block that earlier tokens cannot see. SmolVLA's flags: images 0, language 0 (one
    bidirectional block), state 1 (its own block), every action token 1 (causal among actions).
    """
    blocks = torch.cumsum(ar_flags.long(), dim=1)  # (B, N)
    sees = blocks[:, None, :] <= blocks[:, :, None]  # (B, N query, N key)
    both_real = pad_mask[:, None, :] & pad_mask[:, :, None]
    return sees & both_real


def mask_to_bias(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, Lq, Lk) bool -> (B, 1, Lq, Lk) additive attention bias for `attention`."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    return torch.where(mask[:, None], zero, neg)


def time_embedding(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """Sine-cosine embedding of flow time t (B,) -> (B, dim); periods spaced geometrically.

    Computed in float64 (float32 on Apple MPS, which lacks it) like the reference.
    """
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    dtype = torch.float32 if t.device.type == "mps" else torch.float64
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=t.device)
    period = min_period * (max_period / min_period) ** fraction  # (dim/2,)
    angle = (1.0 / period * 2 * math.pi)[None, :] * t[:, None]  # (B, dim/2)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def expert_mlp_width(width: int, multiplier: int = 4, multiple_of: int = 256) -> int:
    """The expert's MLP width: 4 x (2/3 x width), rounded up to a multiple of 256 (720 -> 2048)."""
    hidden = int(multiplier * int(2 * width / 3))
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# =============================================================================================
# 1b. SmolVLM's vision side: SigLIP patches, their positions, the pixel-shuffle connector
# =============================================================================================
# The kit holds transformers' modules for the weights (so checkpoints load key for key) but runs them
# with the code below, so that what an image becomes does not change with the installed transformers.
# It did change: transformers 5.x gives the patches other position ids than the versions SmolVLM2 and
# smolvla_base were trained with (transformers issue 41190), which moved a policy's actions by degrees.

def patch_position_ids(patch_mask: Tensor, per_side: int, scheme: str = "smolvlm") -> Tensor:
    """Which row of the position-embedding table (per_side^2 rows) each patch adds: (N, h, w) bool -> (N, h*w) long.

    `patch_mask` marks the patches of each image that hold picture (all of them for the kit's square inputs);
    the picture's rows and columns are spread over the table's `per_side` rows and columns by bucketing each
    patch's fractional coordinate i / n (n = picture patches along that side) at the edges 1/per_side, 2/per_side, ...

    * ``"smolvlm"``: SmolVLM's original formula (transformers <= 4.54.1, and 4.57): the coordinate is
      i / n * (1 - 1e-6) in float32, which puts each coordinate just below its edge, so a full row reads
      0, 0, 1, 2, ..., per_side - 2 (512 px in 16 px patches: 0, 0, 1, ..., 30; row 31 of the table is never used).
      This is what LeRobot 0.4.4 computes for a checkpoint it loads (in float32), and what the kit uses for every
      LeRobot checkpoint. (The original works in the pixel values' dtype, so a model *run* in bfloat16 there gets
      other ids; the kit keeps float32 ids in bfloat16 too, so that the precision changes only the precision.)
    * ``"per-patch"``: what transformers 5.x computes: i * (1 / n) in float32, clamped below 1, so a full row
      reads 0, 1, ..., per_side - 1: every patch row and column its own embedding. The `nano` preset's choice.
    Patches outside the picture get id 0 (they are masked out of attention anyway).
    """
    if scheme not in VISION_POSITION_SCHEMES:
        raise InputError(f"vision_position_ids must be one of {VISION_POSITION_SCHEMES}, got {scheme!r}.")
    N, h, w = patch_mask.shape
    device = patch_mask.device
    # Python floats, as in the original: arange's float32 rounding decides how many edges there are.
    edges = torch.arange(1 / per_side, 1.0, 1 / per_side, device=device)
    rows_in_picture = patch_mask[:, :, 0].sum(1)  # (N,)
    cols_in_picture = patch_mask[:, 0, :].sum(1)

    def buckets(count: int, length: int) -> Tensor:  # (length,) ids of one side with `count` picture patches
        index = torch.arange(length, device=device)
        if scheme == "smolvlm":
            frac = torch.arange(count, device=device, dtype=torch.float32) / count * (1 - 1e-6)
            frac = F.pad(frac, (0, length - count))
        else:
            frac = torch.clamp(index.float() * (1.0 / count), max=1.0 - 1e-6)
        return torch.bucketize(frac, edges, right=True)

    ids = torch.zeros(N, h * w, dtype=torch.long, device=device)
    sizes: dict[tuple[int, int], Tensor] = {}  # every image of a batch usually has the same picture size
    for n in range(N):
        key = (int(rows_in_picture[n]), int(cols_in_picture[n]))
        if key not in sizes:
            rows, cols = buckets(key[0], h), buckets(key[1], w)
            sizes[key] = (rows[:, None] * per_side + cols[None, :]).flatten()  # (h*w,)
        ids[n] = torch.where(patch_mask[n].flatten(), sizes[key], ids[n])
    return ids


def vision_attention(attn: nn.Module, x: Tensor, heads: int) -> Tensor:
    """SigLIP self-attention with the weights of `attn`: every patch sees every patch; scale 1/sqrt(head dim)."""
    N, T, D = x.shape
    q, k, v = (proj(x).view(N, T, heads, D // heads).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = F.scaled_dot_product_attention(q, k, v, scale=(D // heads) ** -0.5)  # (N, heads, T, D/heads)
    return attn.out_proj(out.transpose(1, 2).reshape(N, T, D))


def pixel_shuffle(x: Tensor, factor: int) -> Tensor:
    """SmolVLM's token merge: (N, side*side, D) -> (N, (side/f)^2, D*f^2); each f x f block of patches -> one token.

    The order of the merged features is SmolVLM's: the f patches of one row of a block are concatenated first
    (width), then the f rows (height); the blocks come out row by row.
    """
    N, T, D = x.shape
    side = math.isqrt(T)
    if side * side != T or side % factor:
        raise ValueError(f"pixel shuffle needs a square grid of patches divisible by {factor}; got {T} patches.")
    x = x.reshape(N, side, side // factor, D * factor)  # merge f neighbours along a row
    x = x.permute(0, 2, 1, 3).reshape(N, side // factor, side // factor, D * factor * factor)  # and f rows
    return x.permute(0, 2, 1, 3).reshape(N, T // factor**2, D * factor**2)


def check_vision_config(vision_config) -> None:
    """The vision code above is SigLIP's as SmolVLM configures it; refuse a config it would silently misread."""
    if vision_config.hidden_act != "gelu_pytorch_tanh":
        raise InputError(f"SmolVLM vision hidden_act {vision_config.hidden_act!r}: the kit implements 'gelu_pytorch_tanh'.")
    if vision_config.hidden_size % vision_config.num_attention_heads:
        raise InputError("SmolVLM vision hidden_size must be a multiple of num_attention_heads.")


# =============================================================================================
# 2. The two stacks: a truncated SmolVLM and the action expert
# =============================================================================================


def build_vlm(config: SmolVLAConfig) -> nn.Module:
    """transformers' SmolVLMForConditionalGeneration from `config.vlm_config`, cut to `num_vlm_layers`."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    vlm_cfg = SmolVLMConfig(**copy.deepcopy(config.vlm_config))
    check_vision_config(vlm_cfg.vision_config)
    if vlm_cfg.text_config.hidden_act != "silu":
        raise InputError(f"SmolVLM text hidden_act {vlm_cfg.text_config.hidden_act!r}: the kit implements Llama's 'silu'.")
    vlm = SmolVLMForConditionalGeneration(vlm_cfg)
    text = vlm.model.text_model
    if config.num_vlm_layers > 0:
        text.layers = text.layers[: config.num_vlm_layers]
    # SmolVLA rotates with its own RoPE; drop the Llama rotary table so it cannot be used by mistake.
    text.rotary_emb = None
    return vlm


def build_expert(config: SmolVLAConfig, text_config, num_vlm_layers: int) -> nn.Module:
    """A Llama stack (transformers' LlamaModel) of width 0.75 x VLM width, without token embeddings."""
    from transformers import LlamaModel

    cfg = copy.deepcopy(text_config)  # keeps heads and head_dim (64) of the VLM
    cfg.hidden_size = config.expert_width
    cfg.intermediate_size = expert_mlp_width(config.expert_width)
    cfg.num_hidden_layers = config.num_expert_layers if config.num_expert_layers > 0 else num_vlm_layers
    cfg.vocab_size, cfg.pad_token_id = 1, None  # the expert embeds no tokens; keep the table tiny
    expert = LlamaModel(cfg)
    expert.embed_tokens = None
    expert.rotary_emb = None
    if "cross" in config.attention_mode:
        # Cross-attention layers read the VLM's keys/values (Hkv x head_dim = 320 wide for base),
        # so their K/V projections map 320 -> 320 instead of 720 -> 320.
        kv_in = text_config.num_key_value_heads * text_config.head_dim
        kv_out = cfg.num_key_value_heads * cfg.head_dim
        for idx, layer in enumerate(expert.layers):
            if config.self_attn_every_n_layers > 0 and idx % config.self_attn_every_n_layers == 0:
                continue
            layer.self_attn.k_proj = nn.Linear(kv_in, kv_out, bias=cfg.attention_bias)
            layer.self_attn.v_proj = nn.Linear(kv_in, kv_out, bias=cfg.attention_bias)
    return expert


@dataclass
class PrefixCache:
    """What the Euler steps need from the prefix, computed once per chunk.

    `kv[i]` holds, for VLM layer i, either the VLM's (keys, values) after RoPE (joint layers: the
    suffix appends its own) or, for cross-attention layers, those already re-projected by the
    expert's 320 -> 320 k_proj/v_proj (they do not change between steps, so they are projected once).
    """

    kv: list[tuple[Tensor, Tensor] | None]
    pad_mask: Tensor  # (B, P) real prefix tokens
    # RoPE tables of the suffix (absolute positions, and positions from 0 for cross layers); the same
    # at every step, so `denoise_step` fills them on the first step and reuses them.
    suffix_rope: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None


class SmolVLMWithExpert(nn.Module):
    """The VLM and the action expert, run layer by layer side by side."""

    def __init__(self, config: SmolVLAConfig):
        super().__init__()
        self.config = config
        self.vlm = build_vlm(config)
        text_cfg = self.vlm.config.text_config
        self.num_vlm_layers = len(self.vlm.model.text_model.layers)
        self.lm_expert = build_expert(config, text_cfg, self.num_vlm_layers)
        self.num_expert_layers = len(self.lm_expert.layers)
        self.head_dim = text_cfg.head_dim
        self.gradient_checkpointing = False  # see `_finish`; TrainConfig.gradient_checkpointing sets it
        self._patch_ids: dict[tuple, Tensor] = {}  # vision position ids per patch grid and device (`embed_images`)
        # Expert layer j runs beside VLM layer j * (num_vlm / num_expert); other VLM layers have none.
        every = self.num_vlm_layers // self.num_expert_layers
        self.expert_at = [i // every if i % every == 0 else None for i in range(self.num_vlm_layers)]
        n = config.self_attn_every_n_layers
        self.is_cross = [
            "cross" in config.attention_mode and not (n > 0 and i % n == 0) for i in range(self.num_vlm_layers)
        ]
        # An expert layer's K/V projections are built for one kind of layer (by the expert's index,
        # as in LeRobot); the VLM layer it sits beside must be of that kind.
        for i, j in enumerate(self.expert_at):
            if j is not None and self.is_cross[i] != ("cross" in config.attention_mode and not (n > 0 and j % n == 0)):
                raise InputError(
                    f"Expert layer {j} sits beside VLM layer {i}, but one is a cross- and the other a self-attention "
                    f"layer: choose num_expert_layers and self_attn_every_n_layers so that they agree "
                    f"(LeRobot has the same constraint)."
                )

    # -- embeddings ---------------------------------------------------------------------------
    def embed_images(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, T, D): SigLIP patches, pixel shuffle, linear to the text width."""
        vision = self.vlm.model.vision_model
        cfg = self.vlm.config.vision_config
        emb = vision.embeddings
        x = emb.patch_embedding(images.to(emb.patch_embedding.weight.dtype))  # (N, Dv, H/p, W/p)
        grid = (x.shape[2], x.shape[3], x.device)
        if grid not in self._patch_ids:  # the same for every image of this size: computed once
            whole = torch.ones(1, grid[0], grid[1], dtype=torch.bool, device=x.device)  # every patch holds picture
            per_side = cfg.image_size // cfg.patch_size
            self._patch_ids[grid] = patch_position_ids(whole, per_side, self.config.vision_position_ids)  # (1, T)
        h = x.flatten(2).transpose(1, 2) + emb.position_embedding(self._patch_ids[grid])  # (N, T_patch, Dv)
        for layer in vision.encoder.layers:  # pre-norm transformer layers
            h = h + vision_attention(layer.self_attn, layer.layer_norm1(h), cfg.num_attention_heads)
            h = h + layer.mlp.fc2(F.gelu(layer.mlp.fc1(layer.layer_norm2(h)), approximate="tanh"))
        h = vision.post_layernorm(h)
        merged = pixel_shuffle(h, self.vlm.config.scale_factor)  # (N, T_patch / s^2, Dv * s^2)
        return self.vlm.model.connector.modality_projection.proj(merged)  # (N, T_patch / s^2, D)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return self.vlm.model.text_model.embed_tokens(tokens)

    # -- the three passes ---------------------------------------------------------------------
    def forward(self, prefix: Tensor, suffix: Tensor, bias: Tensor, positions: Tensor) -> Tensor:
        """The training pass (and the uncached sampler): prefix (B, P, D) and suffix (B, S, De) through both stacks
        together; `bias` (B, 1, P+S, P+S), RoPE `positions` (B, P+S). -> the expert's normed output (B, S, De)."""
        out, _ = self._layers(prefix, suffix, bias, positions)
        return out

    def prefill(self, prefix: Tensor, bias: Tensor, positions: Tensor) -> PrefixCache:
        """The prefix alone through the VLM, once per chunk: `bias` (B, 1, P, P), `positions` (B, P). -> what the
        denoising steps need of it (each layer's keys and values)."""
        _, cache = self._layers(prefix, None, bias, positions, fill_cache=True)
        return cache

    def denoise_step(self, suffix: Tensor, bias: Tensor, positions: Tensor, cache: PrefixCache) -> Tensor:
        """One Euler step: the suffix (B, S, De) through the expert against a prefilled `cache`; `bias`
        (B, 1, S, P+S), `positions` (B, P+S). -> the expert's normed output (B, S, De)."""
        out, _ = self._layers(None, suffix, bias, positions, cache=cache)
        return out

    # -- the layers ---------------------------------------------------------------------------
    def _layers(
        self, prefix: Tensor | None, suffix: Tensor | None, bias: Tensor, positions: Tensor,
        cache: PrefixCache | None = None, fill_cache: bool = False,
    ) -> tuple[Tensor | None, PrefixCache | None]:
        """The layer loop behind the three passes: a stream that is None is not run (the prefix comes from `cache`)."""
        text = self.vlm.model.text_model
        # The layers may run in bfloat16 (`SmolVLAPolicy.set_dtype`); the projections around them stay float32.
        prefix = prefix.to(text.layers[0].input_layernorm.weight.dtype) if prefix is not None else None
        suffix = suffix.to(self.lm_expert.layers[0].input_layernorm.weight.dtype) if suffix is not None else None
        P = prefix.shape[1] if prefix is not None else cache.pad_mask.shape[1]
        S = suffix.shape[1] if suffix is not None else 0

        # RoPE tables, shared by all layers. In cross layers the expert's queries count from 0.
        if prefix is not None:
            cos_p, sin_p = rope_tables(positions[:, :P], self.head_dim, self.config.rope_max_wavelength)
        if suffix is not None:
            if cache is not None and cache.suffix_rope is not None:
                (cos_s, sin_s), (cos_r, sin_r) = cache.suffix_rope
            else:
                pos_s = positions[:, P:]
                cos_s, sin_s = rope_tables(pos_s, self.head_dim, self.config.rope_max_wavelength)
                pos_rel = pos_s - pos_s.min(dim=1, keepdim=True).values
                cos_r, sin_r = rope_tables(pos_rel, self.head_dim, self.config.rope_max_wavelength)
                if cache is not None:
                    cache.suffix_rope = ((cos_s, sin_s), (cos_r, sin_r))
        bias_pp = bias[:, :, :P, :P] if prefix is not None else None  # prefix rows, prefix keys
        bias_s = bias[:, :, -S:, :] if S else None  # suffix rows, all keys
        new_kv: list = []

        for i in range(self.num_vlm_layers):
            vlm_layer = text.layers[i]
            j = self.expert_at[i]
            exp_layer = self.lm_expert.layers[j] if (j is not None and suffix is not None) else None
            last = i == self.num_vlm_layers - 1
            q_s = k_x = v_x = None  # set below when an expert layer runs beside this one

            # ---- prefix queries/keys/values (B, P, H, Dh) ----
            if prefix is not None:
                h = rms_norm(vlm_layer.input_layernorm, prefix)
                k_p = self._heads(vlm_layer.self_attn.k_proj(h))
                v_p = self._heads(vlm_layer.self_attn.v_proj(h))
                k_p = apply_rope(k_p, cos_p, sin_p)
                # The prefix's output after the last layer is never used: skip its query and MLP.
                q_p = None if last else apply_rope(self._heads(vlm_layer.self_attn.q_proj(h)), cos_p, sin_p)
            else:
                k_p, v_p = cache.kv[i] if cache.kv[i] is not None else (None, None)
                q_p = None

            # ---- the expert's queries and the keys/values it attends to ----
            if exp_layer is not None:
                a = exp_layer.self_attn
                hs = rms_norm(exp_layer.input_layernorm, suffix)
                if self.is_cross[i]:
                    q_s = apply_rope(self._heads(a.q_proj(hs)), cos_r, sin_r)
                    if prefix is not None:  # re-project the VLM's K/V into the expert's K/V space
                        k_x, v_x = self._heads(a.k_proj(k_p.flatten(2))), self._heads(a.v_proj(v_p.flatten(2)))
                    else:
                        k_x, v_x = k_p, v_p  # already re-projected in the cache
                else:
                    q_s = apply_rope(self._heads(a.q_proj(hs)), cos_s, sin_s)
                    k_s = apply_rope(self._heads(a.k_proj(hs)), cos_s, sin_s)
                    v_s = self._heads(a.v_proj(hs))

            # ---- fill the cache for later Euler steps ----
            if fill_cache:
                if j is not None and self.is_cross[i]:
                    a = self.lm_expert.layers[j].self_attn
                    new_kv.append((self._heads(a.k_proj(k_p.flatten(2))), self._heads(a.v_proj(v_p.flatten(2)))))
                elif j is not None:
                    new_kv.append((k_p, v_p))
                else:
                    new_kv.append(None)

            # ---- attention ----
            if exp_layer is not None and not self.is_cross[i]:
                att_p, att_s = self._joint_attention(q_p, k_p, v_p, q_s, k_s, v_s, bias, bias_s)
            else:
                att_p, att_s = self._cross_attention(q_p, k_p, v_p, q_s, k_x, v_x, bias_pp, bias_s)

            # ---- output projections, residuals and MLPs ----
            if att_p is not None:
                prefix = self._finish(vlm_layer, prefix, att_p)
            if exp_layer is not None:
                suffix = self._finish(exp_layer, suffix, att_s)

        out = rms_norm(self.lm_expert.norm, suffix) if suffix is not None else None
        return out, (PrefixCache(new_kv, None) if fill_cache else cache)

    @staticmethod
    def _joint_attention(q_p, k_p, v_p, q_s, k_s, v_s, bias: Tensor, bias_s: Tensor) -> tuple[Tensor | None, Tensor]:
        """A self-attention layer: prefix and suffix attend over [prefix; suffix] keys in one call, the mask keeping
        the prefix from the suffix. Without prefix queries (the prefix cached, or its last layer, whose output is
        unused) only the suffix rows run. -> the prefix's and the suffix's attention outputs."""
        k, v = torch.cat([k_p, k_s], 1), torch.cat([v_p, v_s], 1)  # (B, P+S, Hkv, Dh)
        if q_p is None:
            return None, attention(q_s, k, v, bias_s)
        att = attention(torch.cat([q_p, q_s], 1), k, v, bias)  # (B, P+S, H*Dh)
        P = q_p.shape[1]
        return att[:, :P], att[:, P:]

    @staticmethod
    def _cross_attention(q_p, k_p, v_p, q_s, k_x, v_x, bias_pp, bias_s) -> tuple[Tensor | None, Tensor | None]:
        """A cross-attention layer: the prefix attends to itself; the expert's queries (if the layer has an expert
        beside it) attend to the prefix's keys and values, re-projected into the expert's space (`k_x`, `v_x`)."""
        att_s = attention(q_s, k_x, v_x, bias_s[..., : k_x.shape[1]]) if q_s is not None else None
        att_p = attention(q_p, k_p, v_p, bias_pp) if q_p is not None else None
        return att_p, att_s

    def _heads(self, x: Tensor) -> Tensor:
        """(B, L, H*Dh) -> (B, L, H, Dh)."""
        return x.view(*x.shape[:-1], -1, self.head_dim)

    def _finish(self, layer: nn.Module, x: Tensor, att: Tensor) -> Tensor:
        """Llama block tail: x + o_proj(att), then x + MLP(norm(x)).

        With `gradient_checkpointing` (training only) the tail's activations, the MLP's 4x-wide ones the largest of
        a layer, are not kept for the backward pass but computed again there: less memory for a little more time.
        """
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._block_tail, layer, x, att, use_reentrant=False)
        return self._block_tail(layer, x, att)

    @staticmethod
    def _block_tail(layer: nn.Module, x: Tensor, att: Tensor) -> Tensor:
        x = x + layer.self_attn.o_proj(att.to(layer.self_attn.o_proj.weight.dtype))
        return x + llama_mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, x))


# =============================================================================================
# 3. SmolVLA: prefix/suffix embedding, flow-matching loss, Euler sampler
# =============================================================================================


class SmolVLAModel(nn.Module):
    """The network in normalised, padded units. Pre/post-processing lives in `processing.py`."""

    def __init__(self, config: SmolVLAConfig):
        super().__init__()
        self.config = config
        self.vlm_with_expert = SmolVLMWithExpert(config)
        d_vlm, d_exp = config.vlm_width, config.expert_width
        self.state_proj = nn.Linear(config.max_state_dim, d_vlm)  # state -> one prefix token
        self.action_in_proj = nn.Linear(config.max_action_dim, d_exp)
        self.action_out_proj = nn.Linear(d_exp, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * d_exp, d_exp)  # [action emb; time emb] -> width
        self.action_time_mlp_out = nn.Linear(d_exp, d_exp)
        self.set_requires_grad()

    # -- what trains ----------------------------------------------------------------------------
    def set_requires_grad(self) -> None:
        """Freeze per config. Parameters that can never get a gradient are frozen too (lm_head, final norm, ...)."""
        cfg, vlm = self.config, self.vlm_with_expert.vlm
        if cfg.train_expert_only:
            vlm.requires_grad_(False)
        if cfg.freeze_vision_encoder:
            vlm.model.vision_model.requires_grad_(False)
        # Never used by SmolVLA: the language head, the text model's final norm, and the last VLM
        # layer's query/output/MLP (only its keys and values reach the expert).
        unused = [vlm.lm_head, vlm.model.text_model.norm]
        last = vlm.model.text_model.layers[-1]
        unused += [last.self_attn.q_proj, last.self_attn.o_proj, last.mlp, last.post_attention_layernorm]
        for module in unused:
            module.requires_grad_(False)
        self.state_proj.requires_grad_(cfg.train_state_proj)

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen parts stay in eval mode (no dropout drift), as in the reference.
        if self.config.train_expert_only:
            self.vlm_with_expert.vlm.eval()
        if self.config.freeze_vision_encoder:
            self.vlm_with_expert.vlm.model.vision_model.eval()
        return self

    # -- prefix: images, language, state ----------------------------------------------------
    def embed_prefix(
        self, images: list[Tensor], img_masks: list[Tensor], lang_tokens: Tensor, lang_masks: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """-> embeddings (B, P, D), padding mask (B, P) bool, block flags (B, P) bool.

        Image and language embeddings are scaled by sqrt(D) (SmolVLM's convention); the state is not.
        """
        vwe = self.vlm_with_expert
        B = state.shape[0]
        device = state.device
        # All cameras through the vision tower in one batch: (C*B, 3, H, W) -> (C, B, T, D)
        # (one camera at a time if they are not resized to a common size).
        if len({tuple(img.shape[-2:]) for img in images}) == 1:
            img_embs = vwe.embed_images(torch.cat(images, dim=0)).unflatten(0, (len(images), B))
        else:
            img_embs = torch.stack([vwe.embed_images(img) for img in images])
        d = img_embs.shape[-1]
        img_embs = img_embs * torch.tensor(d**0.5, dtype=img_embs.dtype, device=device)

        embs, pads = [], []
        special = None
        if self.config.add_image_special_tokens:
            if self.config.fake_image_token_id is None or self.config.global_image_token_id is None:
                raise RuntimeError("add_image_special_tokens needs fake/global image token ids (set by the processor).")
            ids = torch.tensor(
                [self.config.fake_image_token_id, self.config.global_image_token_id], dtype=torch.long, device=device
            )
            special = vwe.embed_tokens(ids)  # (2, D), not scaled (as in the reference)
        for cam, mask in enumerate(img_masks):
            if special is not None:  # <fake_token_around_image><global-img> before the image
                embs.append(special[None].expand(B, -1, -1))
                pads.append(torch.ones(B, 2, dtype=torch.bool, device=device))
            embs.append(img_embs[cam])
            pads.append(mask[:, None].expand(B, img_embs.shape[2]))
            if special is not None:  # <fake_token_around_image> after it
                embs.append(special[None, :1].expand(B, -1, -1))
                pads.append(torch.ones(B, 1, dtype=torch.bool, device=device))
        lang = vwe.embed_tokens(lang_tokens)
        embs.append(lang * math.sqrt(lang.shape[-1]))
        pads.append(lang_masks)
        embs.append(self.state_proj(state)[:, None, :].to(img_embs.dtype))  # one state token
        pads.append(torch.ones(B, 1, dtype=torch.bool, device=device))

        embs = torch.cat(embs, dim=1)
        pad_mask = torch.cat(pads, dim=1)
        flags = torch.zeros_like(pad_mask)
        flags[:, -1] = True  # the state token starts its own block: images+language never see it
        if embs.shape[1] < self.config.prefix_length:  # optional fixed-length prefix
            extra = self.config.prefix_length - embs.shape[1]
            embs = F.pad(embs, (0, 0, 0, extra))
            pad_mask = F.pad(pad_mask, (0, extra))
            flags = F.pad(flags, (0, extra))
        return embs, pad_mask, flags

    # -- suffix: noisy actions and time -------------------------------------------------------
    def embed_suffix(self, x_t: Tensor, t: Tensor, temb: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x_t (B, T, A_max), t (B,) -> embeddings (B, T, De), padding mask, flags (all 1: causal).

        `temb` may carry the precomputed time embedding of t (the sampler makes all of them at once).
        """
        act = self.action_in_proj(x_t)  # (B, T, De)
        if temb is None:
            temb = time_embedding(t, act.shape[-1], self.config.min_period, self.config.max_period)
        temb = temb.to(act.dtype)
        fused = torch.cat([act, temb[:, None, :].expand_as(act)], dim=2)  # (B, T, 2 De)
        emb = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))
        ones = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        return emb, ones, ones

    def _velocity(self, suffix_out: Tensor) -> Tensor:
        return self.action_out_proj(suffix_out[:, -self.config.chunk_size :].float())

    def velocity_uncached(self, prefix: tuple[Tensor, Tensor, Tensor], x_t: Tensor, t: Tensor) -> Tensor:
        """v(x_t, t) with prefix and suffix run jointly (training, and the uncached sampler)."""
        embs_p, pad_p, flags_p = prefix
        embs_s, pad_s, flags_s = self.embed_suffix(x_t, t)
        pad = torch.cat([pad_p, pad_s], dim=1)
        mask = block_causal_mask(pad, torch.cat([flags_p, flags_s], dim=1))  # (B, P+S, P+S)
        positions = torch.cumsum(pad.long(), dim=1) - 1
        out = self.vlm_with_expert(embs_p, embs_s, mask_to_bias(mask), positions)
        return self._velocity(out)

    def prefill(self, prefix: tuple[Tensor, Tensor, Tensor], copies: int = 1) -> tuple[PrefixCache, Tensor, Tensor]:
        """Run the prefix through the VLM once -> (cache, bias (B*copies, 1, S, P+S), positions (B*copies, P+S)).

        The cache serves any number of suffixes: the Euler steps of one chunk, or (`copies` > 1) several noisy
        versions of one frame's actions in training, or several draws of one chunk in `sample`. Copies are
        consecutive: rows b*copies .. b*copies+copies-1.
        """
        embs_p, pad_p, flags_p = prefix
        mask_pp = block_causal_mask(pad_p, flags_p)
        pos_p = torch.cumsum(pad_p.long(), dim=1) - 1
        cache = self.vlm_with_expert.prefill(embs_p, mask_to_bias(mask_pp), pos_p)
        if copies > 1:
            cache.kv = [None if kv is None else tuple(x.repeat_interleave(copies, 0) for x in kv) for kv in cache.kv]
            pad_p, flags_p, pos_p = (x.repeat_interleave(copies, 0) for x in (pad_p, flags_p, pos_p))
        cache.pad_mask = pad_p
        # The suffix's mask and positions are the same at every step: build them once.
        S = self.config.chunk_size
        pad_s = torch.ones(pad_p.shape[0], S, dtype=torch.bool, device=pad_p.device)
        mask = block_causal_mask(torch.cat([pad_p, pad_s], 1), torch.cat([flags_p, pad_s], 1))[:, -S:]
        positions = torch.cat([pos_p, pad_p.sum(1, keepdim=True) + torch.cumsum(pad_s.long(), 1) - 1], 1)
        return cache, mask_to_bias(mask), positions

    # -- training ------------------------------------------------------------------------------
    def draw_flow_noise(self, rows: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """A training step's random draws, from torch's global generator: noise (rows, T, A_max) and flow times
        (rows,) from Beta(1.5, 1), which leans towards t=1 (noisier inputs), kept away from 0."""
        noise = torch.randn(rows, self.config.chunk_size, self.config.max_action_dim, device=device)
        beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
        return noise, (beta.sample((rows,)) * 0.999 + 0.001).to(device)

    def loss(
        self, images, img_masks, lang_tokens, lang_masks, state, actions: Tensor,
        noise: Tensor | None = None, time: Tensor | None = None, noise_samples: int = 1,
    ) -> Tensor:
        """Flow-matching loss per element (B, T, A_max), not yet cropped or masked.

        Convention of the code (and of the checkpoints): noise at t=1, data at t=0;
        x_t = t * noise + (1 - t) * actions and the target velocity is noise - actions.

        `noise_samples` K > 1 draws K (noise, time) pairs per frame and averages their losses. The prefix (the
        costly VLM part) runs once and only the small expert runs K times, so each step sees K times as many
        flow-matching targets for a little more compute. `noise` is then (B*K, T, A_max) and `time` (B*K,).
        """
        K = noise_samples
        targets = actions.repeat_interleave(K, 0) if K > 1 else actions  # (B*K, T, A_max)
        for name, given in (("noise", noise), ("time", time)):
            if given is not None and given.shape[0] != targets.shape[0]:
                rows = targets.shape[0]
                raise InputError(f"{name} has {given.shape[0]} rows; with noise_samples={K} it needs batch x {K} = {rows}.")
        if noise is None or time is None:
            drawn_noise, drawn_time = self.draw_flow_noise(targets.shape[0], actions.device)
            noise = drawn_noise if noise is None else noise
            time = drawn_time if time is None else time
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * targets
        u_t = noise - targets
        prefix = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state)
        if K == 1:
            v_t = self.velocity_uncached(prefix, x_t, time)
            return F.mse_loss(v_t, u_t, reduction="none")
        cache, bias, positions = self.prefill(prefix, copies=K)
        embs_s, _, _ = self.embed_suffix(x_t, time)
        out = self.vlm_with_expert.denoise_step(embs_s, bias, positions, cache)
        losses = F.mse_loss(self._velocity(out), u_t, reduction="none")  # (B*K, T, A_max)
        return losses.unflatten(0, (actions.shape[0], K)).mean(1)

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, images, img_masks, lang_tokens, lang_masks, state, noise: Tensor,
        num_steps: int | None = None, use_cache: bool | None = None, return_trajectory: bool = False,
        samples: int = 1,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Euler integration of dx/dt = v from t=1 (noise) to t=0: x <- x - v / num_steps.

        With the cache (default) the prefix runs through the VLM once; each step runs the expert only.
        `samples` N > 1 integrates N noise draws per observation and returns their mean: `noise` is then
        (B*N, T, A_max), copies of one observation consecutive. The prefix still runs once per observation.
        Returns the final x (B, T, A_max) and, with `return_trajectory`, [x_1, x_0.9, ..., x_0] (means over N).
        """
        num_steps = num_steps or self.config.num_steps
        use_cache = self.config.use_cache if use_cache is None else use_cache
        B = state.shape[0]
        if noise.shape[0] != B * samples:
            raise InputError(f"noise has {noise.shape[0]} rows; {B} observations x {samples} samples need {B * samples}.")
        prefix = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state)

        if use_cache:
            cache, bias, positions = self.prefill(prefix, copies=samples)
        elif samples > 1:
            prefix = tuple(x.repeat_interleave(samples, 0) for x in prefix)

        rows = B * samples
        dt = -1.0 / num_steps
        times = [torch.full((rows,), 1.0 + step * dt, dtype=torch.float32, device=noise.device) for step in range(num_steps)]
        d_exp = self.config.expert_width
        tembs = time_embedding(torch.cat(times), d_exp, self.config.min_period, self.config.max_period).split(rows)
        x = noise
        trajectory = [x]
        for step, t in enumerate(times):
            if use_cache:
                embs_s, _, _ = self.embed_suffix(x, t, tembs[step])
                out = self.vlm_with_expert.denoise_step(embs_s, bias, positions, cache)
                v = self._velocity(out)
            else:
                v = self.velocity_uncached(prefix, x, t)
            x = x + dt * v
            trajectory.append(x)
        if samples > 1:  # (B*N, T, A) -> (B, T, A): the mean of each observation's N chunks
            trajectory = [xs.unflatten(0, (B, samples)).mean(1) for xs in trajectory]
            x = trajectory[-1]
        return (x, trajectory) if return_trajectory else x
