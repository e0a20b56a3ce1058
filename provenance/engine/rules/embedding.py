"""nn.Embedding (token and learned position embeddings). A row's gradient touches only the rows of the
table it looked up, so contraction is a gather: g_r . z_k = sum_n z_k[id_rn] . b_rn. Tied weights (GPT-2's
wte is also the output head) need no special case here: the engine contracts every use of a parameter with
the same z, which is the parameter's full target direction, so the cross terms are included."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import UnsupportedLayerError
from ..registry import LayerRule, register


@register(nn.Embedding)
class EmbeddingRule(LayerRule):
    param_names = ("weight",)

    def check(self, module, name):
        if module.max_norm is not None:
            raise UnsupportedLayerError(f"Embedding '{name}' uses max_norm (renormalizes weights in forward)")
        if module.scale_grad_by_freq:
            raise UnsupportedLayerError(f"Embedding '{name}' uses scale_grad_by_freq (batch-dependent gradient)")

    def capture(self, module, args, output):
        ids = args[0].detach()
        if module.padding_idx is not None:
            ids = ids.masked_fill(ids == module.padding_idx, -1)  # no gradient flows to padding_idx
        return ids

    def rows(self, saved) -> int:
        return int(saved.shape[0])

    def grads(self, module, pname, saved, grad, dtype, out=None):
        rows = saved.shape[0]
        numel = rows * module.weight.numel()
        if out is not None and out.dtype == dtype and out.numel() >= numel:
            result = out[:numel].view(rows, *module.weight.shape).zero_()
        else:
            result = torch.zeros(rows, *module.weight.shape, dtype=dtype, device=grad.device)
        self.add_grads(module, pname, saved, grad, result)
        return result

    def add_grads(self, module, pname, saved, grad, into):
        """A scatter-add straight into `into`: no dense (rows, vocab, dim) temporary for a tied head."""
        rows = saved.shape[0]
        ids = saved.reshape(rows, -1)
        b = grad.reshape(rows, ids.shape[1], -1).to(into.dtype)
        valid = ids >= 0
        row_index = torch.arange(rows, device=ids.device).unsqueeze(1).expand_as(ids)
        into.index_put_((row_index[valid], ids[valid]), b[valid], accumulate=True)

    def add_grads_of_weight_rows(self, module, saved, grad, into, rows: slice) -> None:
        """add_grads restricted to weight rows `rows` (token ids start..stop): `into` is (K, len, dim)."""
        n = saved.shape[0]
        ids = saved.reshape(n, -1)
        b = grad.reshape(n, ids.shape[1], -1).to(into.dtype)
        valid = (ids >= rows.start) & (ids < rows.stop)
        row_index = torch.arange(n, device=ids.device).unsqueeze(1).expand_as(ids)
        into.index_put_((row_index[valid], ids[valid] - rows.start), b[valid], accumulate=True)

    def keeps_rows(self, pname: str) -> bool:
        return False  # a row's gradient is dense (vocab, dim) though it touches few rows: gather after instead

    def owns_grad(self, pname: str) -> bool:
        return True  # a scatter-add: forming it here lets tied weights (wte = lm_head) skip autograd too

    def grad_and_dot(self, module, pname, saved, grad, z, budget_elems):
        rows = saved.shape[0]
        ids = saved.reshape(rows, -1)
        b = grad.reshape(rows, ids.shape[1], -1)
        valid = ids >= 0
        total = torch.zeros_like(module.weight)
        total.index_add_(0, ids[valid], b[valid].to(total.dtype))
        out = None if z is None else self.dot(module, pname, saved, grad, z, False, budget_elems)[0]
        return total, out

    def dot(self, module, pname, saved, grad, z, per_token, budget_elems):
        rows = saved.shape[0]
        ids = saved.reshape(rows, -1)
        b = grad.reshape(rows, ids.shape[1], -1).to(z.dtype)
        valid = ids >= 0
        safe_ids = ids.clamp(min=0)
        k = z.shape[0]
        out = b.new_zeros(rows, ids.shape[1], k)
        for j in range(k):
            out[:, :, j] = (z[j][safe_ids] * b).sum(dim=2)
        out = out * valid.unsqueeze(2).to(out.dtype)
        return (out if per_token else out.sum(dim=1)), "gather"
