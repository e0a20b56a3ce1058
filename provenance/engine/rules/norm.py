"""LayerNorm and RMSNorm scales and biases: y = xhat * w (+ bias), so g_r(w) = sum_n b_rn * xhat_rn.

xhat is recomputed with the module's own arithmetic (Llama's RMSNorm normalizes in float32 and casts back),
so the per-row gradients equal autograd's to the bit pattern. It is recomputed when the gradient arrives,
from the input autograd keeps anyway: a copy made in the forward hook would add a residual-stream-sized
tensor per norm to the forward peak."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import LayerRule, register


class ScaleRule(LayerRule):
    def normalized(self, module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def capture(self, module, args, output):
        return args[0].detach()

    def rows(self, saved) -> int:
        return int(saved.shape[0])

    def _flat(self, module, saved, grad, dtype):
        rows = saved.shape[0]
        width = module.weight.numel()
        xhat = self.normalized(module, saved).reshape(rows, -1, width).to(dtype)
        b = grad.reshape(rows, -1, width).to(dtype)
        return xhat, b

    def grads(self, module, pname, saved, grad, dtype, out=None):
        xhat, b = self._flat(module, saved, grad, dtype)
        per_row = (b * xhat).sum(dim=1) if pname == "weight" else b.sum(dim=1)
        return per_row.reshape(per_row.shape[0], *module.weight.shape)

    def dot(self, module, pname, saved, grad, z, per_token, budget_elems):
        xhat, b = self._flat(module, saved, grad, z.dtype)
        source = b * xhat if pname == "weight" else b
        flat_z = z.reshape(z.shape[0], -1)
        if per_token:
            return torch.einsum("rnd,kd->rnk", source, flat_z), "scale"
        return source.sum(dim=1) @ flat_z.T, "scale"


@register(nn.LayerNorm)
class LayerNormRule(ScaleRule):
    def normalized(self, module, x):
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)


if hasattr(nn, "RMSNorm"):

    @register(nn.RMSNorm)
    class TorchRMSNormRule(ScaleRule):
        param_names = ("weight",)

        def normalized(self, module, x):
            return F.rms_norm(x, module.normalized_shape, None, module.eps)


def _llama_normalized(module, x: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as transformers' LlamaRMSNorm.forward, without the weight.
    hidden = x.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + module.variance_epsilon)
    return hidden.to(x.dtype)


try:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    @register(LlamaRMSNorm)
    class LlamaRMSNormRule(ScaleRule):
        param_names = ("weight",)

        def normalized(self, module, x):
            return _llama_normalized(module, x)

except Exception:  # pragma: no cover - transformers without Llama
    pass
