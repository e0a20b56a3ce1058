"""nn.Linear, transformers' GPT-2 Conv1D (y = x W + b, weight stored (in, out)) and nn.Conv2d via unfold.

All three are matmuls y_n = W a_n over positions n of a row, so the per-row weight gradient is
G_r = sum_n b_rn a_rn^T. Two exact routes contract it with K target directions z:
- "target": sum_n b_rn^T z_k a_rn per k (cost K*R*N*din*dout); per-token values come for free;
- "player": form G_r in blocks of rows (R*N*din*dout) then G_r . z_k (R*K*din*dout): cost barely grows
  with K, so it wins for many targets.
Per-row blocks are formed in the weight's own memory layout (Conv1D's (din, dout) as a_r^T b_r), so their
sum is the parameter's gradient as it is stored and a direction z shaped like the parameter is dotted with
them as it is: no transposed pass over parameter-sized memory anywhere (each cost ~2x a contiguous one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedLayerError
from ..registry import LayerRule, register

try:  # transformers is a dependency, but keep the engine importable without it
    from transformers.pytorch_utils import Conv1D
except Exception:  # pragma: no cover
    Conv1D = None


_SCRATCH: dict[torch.dtype, torch.Tensor] = {}
_CHUNKS_REPRODUCE: dict[tuple, bool] = {}  # chunks_reproduce_pieces, per shape (and machine: per process)
_ROW_PIECE_BYTES = 16 * 2**20
_MIN_CHUNK_ROWS = 64


def _scratch(dtype: torch.dtype, numel: int) -> torch.Tensor:
    """A reused flat buffer for per-row gradient blocks: fresh large allocations cost page faults that,
    on CPU, make a batched matmul ~1.5x slower than the plain matmul it replaces."""
    buffer = _SCRATCH.get(dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = _SCRATCH[dtype] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]


def release_scratch() -> None:
    _SCRATCH.clear()


class MatmulRule(LayerRule):
    """Shared maths; subclasses say how to get (a, b) as (rows, N, din) / (rows, N, dout)."""

    transposed = False  # weight stored as (din, dout)

    def capture(self, module, args, output):
        return args[0].detach()

    def rows(self, saved) -> int:
        return int(saved.shape[0])

    def factors(self, module, saved, grad) -> tuple[torch.Tensor, torch.Tensor]:
        rows = saved.shape[0]
        a = saved.reshape(rows, -1, saved.shape[-1])
        b = grad.reshape(rows, -1, grad.shape[-1])
        return a, b

    def _weight_view(self, module, z: torch.Tensor) -> torch.Tensor:
        """z (K, *weight.shape) as (K, dout, din)."""
        return z.transpose(1, 2) if self.transposed else z.reshape(z.shape[0], module.weight.shape[0], -1)

    def _blocks(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row weight gradients sum_n b_rn a_rn^T in the weight's memory layout: (rows, dout, din), or
        (rows, din, dout) for a weight stored (din, dout). `out`: flat memory to write them into."""
        first, second = (a, b) if self.transposed else (b, a)
        if out is not None:
            out = out[: first.shape[0] * first.shape[2] * second.shape[2]]
            out = out.view(first.shape[0], first.shape[2], second.shape[2])
        return torch.bmm(first.transpose(1, 2), second, out=out)

    def grads(self, module, pname, saved, grad, dtype, out=None):
        a, b = self.factors(module, saved, grad)
        a, b = a.to(dtype), b.to(dtype)
        if pname == "bias":
            return b.sum(dim=1)
        rows, din, dout = a.shape[0], a.shape[2], b.shape[2]
        usable = out is not None and out.dtype == dtype and out.numel() >= rows * dout * din
        per_row = self._blocks(a, b, out=out if usable else None)
        return per_row.reshape(rows, *module.weight.shape)

    def owns_grad(self, pname: str) -> bool:
        return pname == "weight"

    def grad_and_dot(self, module, pname, saved, grad, z, budget_elems):
        a, b = self.factors(module, saved, grad)
        weight = module.weight
        a, b = a.to(weight.dtype), b.to(weight.dtype)
        rows, _, din = a.shape
        dout = b.shape[2]
        block = max(1, budget_elems // max(1, din * dout))
        total = None
        out = None if z is None else a.new_zeros(rows, z.shape[0], dtype=z.dtype)
        flat_z = None if z is None else z.reshape(z.shape[0], -1)
        buffer = _scratch(weight.dtype, min(block, rows) * dout * din)
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            per_row = self._blocks(a[start:stop], b[start:stop], out=buffer)
            part = per_row.sum(dim=0)
            total = part if total is None else total + part
            if flat_z is not None:
                out[start:stop] = per_row.reshape(stop - start, -1).to(flat_z.dtype) @ flat_z.T
        return total.reshape(weight.shape), out

    def grad_and_rows(self, module, pname, saved, grad, reuse=False):
        a, b = self.factors(module, saved, grad)
        weight = module.weight
        a, b = a.to(weight.dtype), b.to(weight.dtype)
        rows, _, din = a.shape
        dout = b.shape[2]
        if reuse:
            # Used at once, not kept: one block in the reused scratch buffer (one matmul, one sum, one dot;
            # the sum is grad_and_dot's with all rows in one block, so the gradient's numbers are the same).
            per_row = self._blocks(a, b, out=_scratch(weight.dtype, rows * dout * din))
            return per_row.sum(dim=0).reshape(weight.shape), [per_row]
        # Kept in pieces of a few rows, summed piece by piece (this grouping is what runs were trained with),
        # all views of one allocation per call: above glibc's 32 MB mmap ceiling it is a mapping of its own,
        # returned to the system when the step frees it. Separate 16 MB pieces came from the heap, which kept
        # them resident under the next forward pass's activations (peak RSS, docs/engine.md).
        step = max(1, _ROW_PIECE_BYTES // (dout * din * weight.element_size()))
        flat = torch.empty(rows * dout * din, dtype=weight.dtype)
        pieces = [
            self._blocks(a[i : i + step], b[i : i + step], out=flat[i * dout * din :]) for i in range(0, rows, step)
        ]
        total = pieces[0].sum(dim=0)
        for piece in pieces[1:]:  # a one-row piece is its own sum: no temporary (same numbers)
            total += piece[0] if piece.shape[0] == 1 else piece.sum(dim=0)
        return total.reshape(weight.shape), pieces

    def grad_and_dot_by_weight_rows(self, module, saved, grad, direction_of, chunk_elems):
        """The batch gradient, summed exactly as grad_and_rows sums it, and each row's dots with a direction
        known only row by row: blocks are formed for a few rows of the weight (output features) at a time,
        summed, and `direction_of(rows, gradient of those rows)` gives (K, len(rows), din) (None: no dots).
        Only a chunk of blocks exists at once (a tied output head's are rows x vocab x width). (total, (rows, K))."""
        if self.transposed:
            raise ValueError("grad_and_dot_by_weight_rows needs a weight stored (out, in)")
        a, b = self.factors(module, saved, grad)
        weight = module.weight
        a, b = a.to(weight.dtype), b.to(weight.dtype)
        rows, _, din = a.shape
        dout = b.shape[2]
        step = max(1, _ROW_PIECE_BYTES // (dout * din * weight.element_size()))  # grad_and_rows' pieces
        # Chunks of at least _MIN_CHUNK_ROWS weight rows, of even widths: the matmul then gives each block
        # element bit for bit as the whole-weight matmul does (MKL took another path for 1-5 output rows with
        # few tokens), so the batch gradient, hence training, is that of grad_and_rows (tested). A piece of
        # one or two rows is summed by at most one addition per element, the same on a chunk; torch's sum over
        # more rows may group them otherwise on a chunk than on the whole (seen on small weights), so a weight
        # small enough for pieces of 3+ rows (under 16 MB / 3) is formed whole.
        most = max(_MIN_CHUNK_ROWS, chunk_elems // max(1, rows * din))
        chunks = max(1, min(-(-dout // most), dout // _MIN_CHUNK_ROWS)) if min(step, rows) <= 2 else 1
        width = -(-dout // chunks)
        buffer = _scratch(weight.dtype, rows * width * din)
        total = torch.empty(dout, din, dtype=weight.dtype)
        values = None
        for start in range(0, dout, width):
            stop = min(dout, start + width)
            blocks = self._blocks(a, b[:, :, start:stop], out=buffer)  # (rows, stop - start, din)
            part = total[start:stop]
            part.copy_(blocks[:step].sum(dim=0))
            for i in range(step, rows, step):
                part += blocks[i] if min(rows, i + step) - i == 1 else blocks[i : i + step].sum(dim=0)
            z = direction_of(slice(start, stop), part)
            if z is not None:
                dots = blocks.reshape(rows, -1).to(z.dtype) @ z.reshape(z.shape[0], -1).T
                values = dots if values is None else values + dots
        return total, values

    def chunks_reproduce_pieces(self, module, rows: int, tokens: int, dtype: torch.dtype, chunk_elems: int) -> bool:
        """Whether grad_and_dot_by_weight_rows gives the batch gradient grad_and_rows gives, bit for bit, at
        these shapes on this machine. Whether a matmul over a few output columns gives each element exactly as
        the whole one depends on the BLAS library's kernels for each shape and CPU (equal on the Intel machines
        seen here; on an AMD EPYC, float32 at vocab 8192 x width 768 and float64 at small sizes were not), never
        on the numbers: checked once per shape on random inputs of those shapes."""
        key = (type(self), tuple(module.weight.shape), rows, tokens, dtype, chunk_elems, _ROW_PIECE_BYTES)
        known = _CHUNKS_REPRODUCE.get(key)
        if known is None:
            g = torch.Generator().manual_seed(0)
            din, dout = module.weight.shape[1], module.weight.shape[0]
            saved = torch.randn(rows, tokens, din, generator=g, dtype=dtype)
            grad = torch.randn(rows, tokens, dout, generator=g, dtype=dtype)
            by_chunks, _ = self.grad_and_dot_by_weight_rows(module, saved, grad, lambda rows, grad: None, chunk_elems)
            whole, pieces = self.grad_and_rows(module, "weight", saved, grad)
            del pieces
            known = _CHUNKS_REPRODUCE[key] = bool(torch.equal(by_chunks, whole))
        return known

    def dot_weight_rows(self, module, saved, grad, z, index, budget_elems):
        """Dots of each row's gradient with z (K, len(index), din), the direction of weight rows `index` only:
        (rows, K). Their blocks are re-derived from the kept input and output gradient, a few rows at a time."""
        a, b = self.factors(module, saved, grad)
        a, b = a.to(z.dtype), b.to(z.dtype)
        rows, _, din = a.shape
        width = max(1, budget_elems // max(1, rows * din))
        out = a.new_zeros(rows, z.shape[0])
        for start in range(0, index.numel(), width):
            chunk = index[start : start + width]
            blocks = self._blocks(a, b[:, :, chunk])  # (rows, len(chunk), din)
            out += blocks.reshape(rows, -1) @ z[:, start : start + width].reshape(z.shape[0], -1).T
        return out

    def grads_of_weight_rows(self, module, saved, grad, dtype, rows):
        """Each row's (here: each target's) weight gradient restricted to rows `rows` (a slice or an index) of
        the weight as stored (Conv1D: (din, dout)): (K, len, columns)."""
        a, b = self.factors(module, saved, grad)
        a, b = a.to(dtype), b.to(dtype)
        return self._blocks(a[:, :, rows], b) if self.transposed else self._blocks(a, b[:, :, rows])

    def dot_rows(self, module, pname, per_row, z):
        if pname == "bias":
            return super().dot_rows(module, pname, per_row, z)
        flat_z = z.reshape(z.shape[0], -1).T
        return torch.cat([piece.reshape(piece.shape[0], -1).to(z.dtype) @ flat_z for piece in per_row])

    def ghost_cost(self, module, saved, target_saved) -> int:
        """Multiply-adds of `ghost_dot` for one training call against one target call."""
        rows, tokens = saved.shape[0], saved[0].numel() // saved.shape[-1]
        weight = module.weight
        din, dout = weight.shape if self.transposed else (weight[0].numel(), weight.shape[0])
        return rows * tokens * target_saved[0].numel() // target_saved.shape[-1] * target_saved.shape[0] * (din + dout)

    def ghost_dot(self, module, saved, grad, target_saved, target_grad, dtype):
        """Pairwise ("ghost") dots of per-row weight gradients with each target's weight gradient, neither
        ever formed: g_r . G_k = sum_{n,s} (a_rn . a_ks)(b_rn . b_ks). (rows, K)."""
        a, b = self.factors(module, saved, grad)
        av, bv = self.factors(module, target_saved, target_grad)
        rows, n, din = a.shape
        k, tv, dout = bv.shape
        sa = a.reshape(rows * n, din).to(dtype) @ av.reshape(k * tv, din).to(dtype).T
        sb = b.reshape(rows * n, dout).to(dtype) @ bv.reshape(k * tv, dout).to(dtype).T
        return sa.mul_(sb).view(rows, n, k, tv).sum(dim=(1, 3))

    def dot(self, module, pname, saved, grad, z, per_token, budget_elems):
        a, b = self.factors(module, saved, grad)
        dtype = z.dtype
        a, b = a.to(dtype), b.to(dtype)
        if pname == "bias":
            if per_token:
                return torch.einsum("rno,ko->rnk", b, z), "bias"
            return b.sum(dim=1) @ z.T, "bias"
        zw = self._weight_view(module, z)  # (K, dout, din)
        rows, n, din = a.shape
        dout = b.shape[2]
        k = zw.shape[0]
        # Output rows where every target direction is zero contribute nothing (e.g. the part of a tied
        # embedding/head direction that comes from the embedding use: only the targets' tokens' rows).
        live = zw.ne(0).any(dim=2).any(dim=0).nonzero().flatten()
        target_cost = k * rows * n * din * live.numel()
        player_cost = rows * n * din * dout + rows * k * din * dout
        if per_token or target_cost <= player_cost:
            zw_live, b_live = (zw[:, live], b[:, :, live]) if live.numel() < dout else (zw, b)
            out = a.new_zeros(rows, n, k) if per_token else a.new_zeros(rows, k)
            for j in range(k):
                projected = torch.matmul(a, zw_live[j].T)  # (rows, n, live dout)
                contrib = (projected * b_live).sum(dim=2)
                if per_token:
                    out[:, :, j] = contrib
                else:
                    out[:, j] = contrib.sum(dim=1)
            return out, "target"
        block = max(1, budget_elems // max(1, din * dout))
        out = a.new_zeros(rows, k)
        flat_z = z.reshape(k, -1)
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            per_row = self._blocks(a[start:stop], b[start:stop])  # (block, *weight layout)
            out[start:stop] = per_row.reshape(stop - start, -1) @ flat_z.T
        return out, "player"


@register(nn.Linear)
class LinearRule(MatmulRule):
    pass


if Conv1D is not None:

    @register(Conv1D)
    class GPT2Conv1DRule(MatmulRule):
        transposed = True


@register(nn.Conv2d)
class Conv2dRule(MatmulRule):
    """Conv2d as a matmul over unfolded patches: positions n are the output pixels."""

    def check(self, module, name):
        if module.groups != 1:
            raise UnsupportedLayerError(f"Conv2d '{name}' has groups={module.groups}; only groups=1 is supported")
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"Conv2d '{name}' uses padding_mode={module.padding_mode!r}; only 'zeros' is supported"
            )
        if isinstance(module.padding, str) and module.padding != "valid":
            raise UnsupportedLayerError(
                f"Conv2d '{name}' uses padding={module.padding!r}; give explicit integer padding instead"
            )

    def capture(self, module, args, output):
        x = args[0].detach()
        padding = 0 if isinstance(module.padding, str) else module.padding
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        return patches.transpose(1, 2)  # (rows, positions, cin*kh*kw)

    def factors(self, module, saved, grad):
        rows = grad.shape[0]
        b = grad.reshape(rows, grad.shape[1], -1).transpose(1, 2)  # (rows, positions, cout)
        return saved, b
