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

    @staticmethod
    def _positions(module, ids: torch.Tensor, rows) -> torch.Tensor:
        """Each id's position among weight rows `rows` (a slice or an index), -1 where it is not one of them."""
        where = torch.full((module.weight.shape[0] + 1,), -1, dtype=torch.long)  # last entry: padding (-1)
        if isinstance(rows, slice):
            where[rows.start : rows.stop] = torch.arange(rows.stop - rows.start)
        else:
            where[rows] = torch.arange(rows.numel())
        return where[ids]

    def add_grads_of_weight_rows(self, module, saved, grad, into, rows) -> None:
        """add_grads restricted to weight rows `rows` (a slice or an index of token ids): `into` (K, len, dim)."""
        n = saved.shape[0]
        ids = saved.reshape(n, -1)
        b = grad.reshape(n, ids.shape[1], -1).to(into.dtype)
        position = self._positions(module, ids, rows)
        valid = position >= 0
        row_index = torch.arange(n, device=ids.device).unsqueeze(1).expand_as(ids)
        into.index_put_((row_index[valid], position[valid]), b[valid], accumulate=True)

    def dot_weight_rows(self, module, saved, grad, z, index, budget_elems):
        """Dots of each row's gradient with z (K, len(index), dim), the direction of weight rows `index`
        (which must hold every id the rows embed): (rows, K)."""
        n = saved.shape[0]
        ids = saved.reshape(n, -1)
        position = self._positions(module, ids, index)
        if bool(((ids >= 0) & (position < 0)).any()):
            raise ValueError("dot_weight_rows: an embedded id is not among the given weight rows")
        b = grad.reshape(n, ids.shape[1], -1).to(z.dtype)
        safe = position.clamp(min=0)
        valid = (position >= 0).unsqueeze(2).to(z.dtype)
        return torch.stack([(z[j][safe] * b * valid).sum(dim=(1, 2)) for j in range(z.shape[0])], dim=1)

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
