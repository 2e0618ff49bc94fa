"""The bidirectional transformer: token ids -> logits, nothing else.

A LLaMA/Qwen2-style block (RMSNorm, rotary positions, SwiGLU, grouped-query attention, optional qkv bias,
optional tied embeddings) with no causal mask. Positions are given per token, so padding can sit anywhere in a
batch (rotary attention only sees position differences). A KVCache keeps every layer's keys and values so a later
call can recompute only a block of positions (the masked span) against the cached context.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import ModelConfig
from engine.errors import FillCancelled


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == self.weight.dtype:  # torch's fused kernel: one launch instead of seven on a GPU
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding in the rotate-half layout, x * cos + (-x2, x1) * sin, written as x * cos + (x2, x1) * sin'
    with sin' = (-sin1, sin2) (what DiffusionLM.rotary returns): three kernels instead of five. x [B, heads, S, D],
    cos and sin' [B, 1, S, D]."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


@dataclass
class KVCache:
    """Keys and values of every layer for a whole window: each [B, kv_heads, T, head_dim]."""

    keys: list[Tensor]
    values: list[Tensor]


class Attention(nn.Module):
    """Grouped-query self-attention without a causal mask."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        h, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(h, h, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, kv, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, kv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.qkv_proj: nn.Linear | None = None  # set by fuse(): q, k and v in one matmul

    def fuse(self) -> None:
        """Inference only: replace q_proj, k_proj and v_proj by one qkv_proj holding their rows in that order
        (one matmul and one rotary pass for q and k together instead of three and two; the same outputs)."""
        if self.qkv_proj is not None:
            return
        self.qkv_proj = _concat_linears([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries [B, h, S, D] and keys [B, kv, S, D], rotated, and values [B, kv, S, D] for x [B, S, H]."""
        b, s, _ = x.shape
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)  # [B, h + 2 kv, S, D]
            if cos.dtype != qkv.dtype:
                cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
            qk = apply_rotary(qkv[:, : self.num_heads + self.num_kv_heads], cos, sin)
            return qk[:, : self.num_heads], qk[:, self.num_heads :], qkv[:, self.num_heads + self.num_kv_heads :]
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if cos.dtype != q.dtype:  # under autocast (training); at inference the model casts them once per pass
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(
        self,
        x: Tensor,  # [B, S, H]
        cos: Tensor,  # [B, 1, S, D] in x's dtype
        sin: Tensor,  # [B, 1, S, D], signed for apply_rotary
        attn_mask: Tensor | None,  # [B, 1, 1, T] bool, True = may attend
        cache: tuple[Tensor, Tensor] | None,  # keys, values [B, kv, T, D] of the whole window
        start: int,  # position of x's first row inside the window (block mode)
        fill_cache: bool,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        b, s, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        new_cache = None
        if cache is not None and not fill_cache:
            keys, values = cache
            keys[:, :, start : start + s] = k  # write the block's fresh keys into the window's cache
            values[:, :, start : start + s] = v
            k, v = keys, values  # [B, kv, T, D]
        elif fill_cache:
            new_cache = (k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, enable_gqa=self.num_kv_heads != self.num_heads
        )  # [B, h, S, D]
        out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.o_proj(out), new_cache


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_proj: nn.Linear | None = None  # set by fuse()

    def fuse(self) -> None:
        """Inference only: gate_proj and up_proj as one matmul (gate_up_proj, gate rows first)."""
        if self.gate_up_proj is not None:
            return
        self.gate_up_proj = _concat_linears([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _concat_linears(parts: list[nn.Linear]) -> nn.Linear:
    """One nn.Linear whose output is the parts' outputs side by side (same device and dtype, no grad)."""
    w = parts[0].weight
    out = nn.Linear(w.shape[1], sum(p.out_features for p in parts), bias=parts[0].bias is not None,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([p.weight for p in parts]))
        if out.bias is not None:
            out.bias.copy_(torch.cat([p.bias for p in parts]))
    out.requires_grad_(False)
    return out


# fused module name -> (unfused names in order); plain_state_dict splits along the output rows
FUSED = {"attn.qkv_proj": ("attn.q_proj", "attn.k_proj", "attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


class Block(nn.Module):
    """Pre-norm attention and MLP with residuals."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask, cache, start, fill_cache):  # type: ignore[no-untyped-def]
        a, new_cache = self.attn(self.input_norm(x), cos, sin, attn_mask, cache, start, fill_cache)
        x = x + a
        x = x + self.mlp(self.post_attn_norm(x))
        return x, new_cache


def rotary_inv_freq(cfg: ModelConfig, device: torch.device | str | None = None) -> Tensor:
    """Rotary frequencies [head_dim / 2], always float32."""
    hd = cfg.head_dim
    # Computed on the CPU and then moved: torch.arange on the meta device runs a Python reference that imports
    # torch._dynamo (seconds); `device` None means the current default device, as for any factory function.
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device="cpu") / hd))
    return freqs.to(torch.empty(0, device=device).device)


class DiffusionLM(nn.Module):
    """Bidirectional transformer for masked diffusion: ids [B, T] -> logits [B, T, V]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        # nn.Embedding's own init is a normal_ that, on the meta device (how checkpoints are loaded), runs a Python
        # meta kernel which imports torch._dynamo (two seconds of every `codefill fill`). Same init, skipped on meta.
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        if not weight.is_meta:
            nn.init.normal_(weight)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rotary_inv_freq(cfg), persistent=False)

    def init_weights(self, seed: int = 0) -> None:
        """Small normal init (std 0.02), scaled down on residual outputs."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("weight"):
                    nn.init.ones_(p)
                else:
                    nn.init.zeros_(p)
                continue
            std = 0.02
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                std = 0.02 / (2 * self.cfg.num_layers) ** 0.5
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)

    def fuse_projections(self) -> DiffusionLM:
        """Inference only: every layer's q/k/v and gate/up projections as one matmul each (Attention.fuse,
        MLP.fuse); the outputs are the same. Call after moving the model to its device and dtype and before
        quantizing it. state_dict() then names the fused weights; plain_state_dict() gives the usual names."""
        for layer in self.layers:
            layer.attn.fuse()
            layer.mlp.fuse()
        return self

    def plain_state_dict(self) -> dict[str, Tensor]:
        """state_dict() with every fused projection split back into its parts' names (the checkpoint layout)."""
        cfg = self.cfg
        kv = cfg.num_kv_heads * cfg.head_dim
        sizes = {"attn.qkv_proj": [cfg.num_heads * cfg.head_dim, kv, kv],
                 "mlp.gate_up_proj": [cfg.intermediate_size, cfg.intermediate_size]}
        out: dict[str, Tensor] = {}
        for name, t in self.state_dict().items():
            prefix, _, leaf = name.rpartition(".")
            fused = next((f for f in FUSED if prefix.endswith("." + f)), None)
            if fused is None:
                out[name] = t
                continue
            head = prefix[: -len(fused)]
            for part, piece in zip(FUSED[fused], t.split(sizes[fused]), strict=True):
                out[f"{head}{part}.{leaf}"] = piece
        return out

    def rotary(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """cos and signed sin (see apply_rotary) for the given positions [B, S] -> each [B, 1, S, head_dim], computed
        in float32 and returned in dtype."""
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # [B, S, D/2]
        cos, sin = freqs.cos(), freqs.sin()
        cos = torch.cat((cos, cos), dim=-1).unsqueeze(1)  # [B, 1, S, D]
        sin = torch.cat((-sin, sin), dim=-1).unsqueeze(1)
        return cos.to(dtype), sin.to(dtype)

    def forward(
        self,
        ids: Tensor,  # [B, S]
        positions: Tensor | None = None,  # [B, S]; default 0..S-1
        key_mask: Tensor | None = None,  # [B, T] bool: which window positions are real tokens
        cache: KVCache | None = None,
        start: int = 0,
        fill_cache: bool = False,
        hidden_only: bool = False,
        cancel: threading.Event | None = None,
    ) -> tuple[Tensor, KVCache | None]:
        """Logits [B, S, V] for ids.

        Whole-window mode (cache None or fill_cache): ids is the window; with fill_cache the keys and values of
        every layer are returned as a new KVCache. With hidden_only the final normed hidden states [B, S, H] are
        returned instead of logits (apply lm_head to the rows that matter). Block mode (cache given, fill_cache False): ids are the window
        positions start..start+S, their keys and values are written into the cache, and attention reads the whole
        cached window. A cancel event set during the pass raises FillCancelled at the next layer (eager only: a
        whole-window pass of the built-in model is ~80 ms on a CPU core, too long for a newer request to wait out).
        """
        b, s = ids.shape
        if positions is None:
            positions = torch.arange(start, start + s, device=ids.device).expand(b, s)
        attn_mask = None
        if key_mask is not None:
            attn_mask = key_mask[:, None, None, :]  # [B, 1, 1, T]
        x = self.embed_tokens(ids)  # [B, S, H]
        cos, sin = self.rotary(positions, x.dtype)  # once per pass, not per layer
        keys: list[Tensor] = []
        values: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if cancel is not None and cancel.is_set():
                raise FillCancelled("fill cancelled")
            layer_cache = None
            if cache is not None and not fill_cache:
                layer_cache = (cache.keys[i], cache.values[i])
            x, new = layer(x, cos, sin, attn_mask, layer_cache, start, fill_cache)
            if new is not None:
                keys.append(new[0])
                values.append(new[1])
        x = self.norm(x)  # [B, S, H]
        out = x if hidden_only else self.lm_head(x)  # [B, S, V]
        return out, (KVCache(keys, values) if fill_cache else None)
