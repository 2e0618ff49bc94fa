"""The autoregressive baseline: the same DiffusionLM weights run as a causal LM with a KV cache, one token a step.

This is what the diffusion engine must beat: a model of exactly the same size generating the same number of
tokens the classic way. The decoder uses the model's own submodules (embedding, norms, projections, MLP, head);
only the attention bookkeeping is new: keys and values go into buffers allocated once at their final length
(gpt-fast style), written in place at positions given as a tensor, and each query attends to the buffer under a
mask, so every decode step has the same shapes (CUDA-graph and torch.compile friendly) and needs no host sync.
`reference_generate` recomputes the full causal forward for every token through the model's own Block.forward;
tests/test_bench.py checks that both produce the same tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.model import Block, DiffusionLM


class CausalDecoder:
    """Greedy causal generation with a static KV cache over a DiffusionLM's weights."""

    def __init__(self, model: DiffusionLM, batch: int, max_len: int, suppress: list[int] | None = None) -> None:
        """suppress: ids never generated (the end tokens, as min_new_tokens does in transformers' generate)."""
        cfg = model.cfg
        p = model.embed_tokens.weight
        self.model = model
        self.batch = batch
        self.max_len = max_len
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.layers]
        self.values = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.layers]
        self.slots = torch.arange(max_len, device=p.device)  # [T]
        self.suppress = torch.tensor(sorted(set(suppress or [])), dtype=torch.long, device=p.device)  # [S]

    def _attend(self, layer: Block, i: int, x: Tensor, cos: Tensor, sin: Tensor, at: Tensor, mask: Tensor) -> Tensor:
        """One block for the rows x [B, S, H] sitting at window positions at [S]."""
        attn = layer.attn
        b, s, _ = x.shape
        h = layer.input_norm(x)
        q, k, v = attn.project(h, cos, sin)  # the diffusion model's own projections (fused or not), rotated
        self.keys[i].index_copy_(2, at, k)  # [B, kv, T, D]
        self.values[i].index_copy_(2, at, v)
        out = F.scaled_dot_product_attention(
            q, self.keys[i], self.values[i], attn_mask=mask, enable_gqa=self.num_kv_heads != self.num_heads
        )  # [B, h, S, D]
        out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        x = x + attn.o_proj(out)
        return x + layer.mlp(layer.post_attn_norm(x))

    def forward(self, ids: Tensor, at: Tensor) -> Tensor:
        """Logits [B, V] of the last of ids [B, S], which sit at positions at [S]; caches their keys and values."""
        m = self.model
        b, s = ids.shape
        mask = (self.slots.unsqueeze(0) <= at.unsqueeze(1))[None, None]  # [1, 1, S, T]: causal, ignores stale slots
        x = m.embed_tokens(ids)  # [B, S, H]
        cos, sin = m.rotary(at.expand(b, s), x.dtype)  # [B, 1, S, D]
        for i, layer in enumerate(m.layers):
            x = self._attend(layer, i, x, cos, sin, at, mask)
        logits = m.lm_head(m.norm(x[:, -1]))  # [B, V]
        if self.suppress.numel():
            logits.index_fill_(1, self.suppress, -math.inf)
        return logits

    def prefill(self, prompt: Tensor) -> Tensor:
        """Run the prompt [B, P]; returns the first generated token [B]."""
        at = torch.arange(prompt.shape[1], device=prompt.device)  # [P]
        return self.forward(prompt, at).argmax(-1)

    def decode_step(self, token: Tensor, at: Tensor) -> Tensor:
        """One token [B] at position at [1] -> the next token [B]. Fixed shapes, no host sync."""
        return self.forward(token.unsqueeze(1), at).argmax(-1)

    @torch.inference_mode()
    def generate(self, prompt: Tensor, n: int) -> Tensor:
        """Greedy: n new tokens [B, n] after prompt [B, P]."""
        p = prompt.shape[1]
        if p + n - 1 > self.max_len:
            raise ValueError(f"prompt {p} + {n} new tokens do not fit the cache of {self.max_len}")
        out = torch.empty((prompt.shape[0], n), dtype=torch.long, device=prompt.device)
        token = self.prefill(prompt)
        out[:, 0] = token
        at = torch.full((1,), p, dtype=torch.long, device=prompt.device)
        for t in range(1, n):
            token = self.decode_step(token, at)
            out[:, t] = token
            at += 1
        return out


@torch.inference_mode()
def reference_generate(model: DiffusionLM, prompt: Tensor, n: int, suppress: list[int] | None = None) -> Tensor:
    """Greedy, recomputing the whole causal forward for every new token through the model's own blocks: slow,
    obviously right; the standard the KV-cache decoder is checked against."""
    ids = prompt
    out = []
    for _ in range(n):
        b, s = ids.shape
        positions = torch.arange(s, device=ids.device).expand(b, s)
        causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()[None, None]  # [1, 1, S, S]
        x = model.embed_tokens(ids)
        cos, sin = model.rotary(positions, x.dtype)
        for layer in model.layers:
            x, _ = layer(x, cos, sin, causal, None, 0, False)
        logits = model.lm_head(model.norm(x[:, -1]))  # [B, V]
        if suppress:
            logits[:, sorted(set(suppress))] = -math.inf
        token = logits.argmax(-1)  # [B]
        out.append(token)
        ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
    return torch.stack(out, dim=1)
