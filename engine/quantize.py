"""Int8 weights for CPU inference: every linear layer of the transformer blocks as a dynamic int8 matmul.

On the CPU a denoising step is bound by matrix multiplies: the whole-window pass by arithmetic, the span passes by
reading the weights from memory. Storing the weights as int8 (one scale per output channel) and quantizing each
call's activations on the fly (one scale per call) lets torch's x86 int8 kernels (fbgemm, VNNI) do both about
three times faster than fp32 on our 2-core CPU (README, Speed). The embedding stays in float. The output head (tied
to the embedding) gets its own int8 copy (quantize_head): over a span's ~17 rows it reads the whole 8192 x 384 matrix
for each step, which took 1.3 ms in fp32 and 0.3 in int8, about 6 ms of a one-line fill; on held-out lines exact match
stayed level (Python 14.8 against 14.9% of 1,000, JavaScript 5.4 against 5.2% of 500).

The kernels are torch's quantized ops (`torch.ops.quantized.linear_dynamic`). torch marks its quantized tensor types
deprecated; `available()` tries them once, and where they are missing or fail the engine stays in float and says so.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@functools.cache
def _reduce_range() -> bool:
    """Whether activations must use 7 bits: x86 int8 kernels without VNNI can overflow an int16 sum with 8."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


def _pack(weight: Tensor, bias: Tensor | None) -> torch.ScriptObject:
    """Per-output-channel symmetric int8 weights, packed for the int8 matmul kernel."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that quantized tensors are deprecated
        q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())


@functools.cache
def available() -> bool:
    """Whether this torch and CPU run the int8 matmul (tried once on a tiny layer)."""
    try:
        packed = _pack(torch.randn(8, 16), None)
        out = torch.ops.quantized.linear_dynamic(torch.randn(2, 16), packed, _reduce_range())
        return bool(out.shape == (2, 8) and torch.isfinite(out).all())
    except Exception as exc:  # a missing op, an unsupported CPU: float it is
        log.info("int8 matmuls unavailable: %s", exc)
        return False


class Int8Linear(nn.Module):
    """A frozen nn.Linear with int8 weights; input and output stay float32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed = _pack(linear.weight, linear.bias)
        self.reduce_range = _reduce_range()

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_blocks(blocks: nn.Module) -> int:
    """Replace every nn.Linear inside `blocks` (the transformer layers) with an Int8Linear; returns how many.

    The layers must be on the CPU; they are changed in place and are for inference only from then on.
    """
    if any(p.device.type != "cpu" for p in blocks.parameters()):
        raise ValueError("int8 weights are for the CPU")
    found = [(parent, name, sub) for parent in blocks.modules() for name, sub in parent.named_children()
             if isinstance(sub, nn.Linear)]
    for parent, name, sub in found:
        setattr(parent, name, Int8Linear(sub))
    return len(found)


def quantize_head(owner: nn.Module, name: str = "lm_head") -> None:
    """Replace owner.<name>, an nn.Linear on the CPU (the output head), with an int8 copy; a weight it shares with
    the embedding stays float there."""
    head = getattr(owner, name)
    if not isinstance(head, nn.Linear) or head.weight.device.type != "cpu":
        raise ValueError("int8 weights are for an nn.Linear on the CPU")
    setattr(owner, name, Int8Linear(head))
