"""Fixed random projections of each parameter's gradient, and the layout of the flat sketch vector.

A matrix parameter is seen in a canonical (out, in) orientation (nn.Linear and nn.Embedding as stored,
GPT-2's Conv1D transposed, Conv2d flattened to (cout, cin*kh*kw)); its gradient G is sketched as
Q_out G Q_in^T (k_out x k_in). Q has i.i.d. N(0, 1/k) entries, so E[Q^T Q] = I and sketch dots are
unbiased estimates of gradient dots; a side whose size is <= k is kept exactly (Q = identity).
Vectors (biases, LayerNorm scales) get one Q of k_vector rows. Per-row sketches of a matrix are
formed from per-token factors (Q_out b_t) (Q_in a_t)^T, never the full per-row gradient.

Data-dependent ("pca") projections replace each Gaussian matrix side by the top-k eigenvectors of that
side's gradient covariance, estimated during a calibration window of training (observer.CovarianceSketch,
LoGra-style): rows are orthonormal, so a sketch dot is the exact dot of the gradients' parts inside the
dominant subspaces (biased, low variance) instead of an unbiased but noisy random estimate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from provenance.errors import UnsupportedLayerError


@dataclass(frozen=True)
class ParamSlot:
    """One parameter's place in the flat sketch: (k_out, k_in) block or a k_vector block."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "matrix" or "vector"
    transposed: bool  # stored as (in, out) (GPT-2 Conv1D)
    out_dim: int
    in_dim: int  # 0 for vectors
    k_out: int
    k_in: int  # 0 for vectors
    offset: int

    @property
    def size(self) -> int:
        return self.k_out * self.k_in if self.kind == "matrix" else self.k_out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind, "transposed": self.transposed,
                "out_dim": self.out_dim, "in_dim": self.in_dim, "k_out": self.k_out, "k_in": self.k_in,
                "offset": self.offset}


def _gaussian(rows: int, cols: int, seed: int, name: str, side: str) -> torch.Tensor:
    """N(0, 1/rows) entries from a seed derived from (seed, parameter name, side): stable across runs."""
    digest = hashlib.sha256(f"{seed}:{name}:{side}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(rows, cols, generator=generator, dtype=torch.float64) / rows**0.5


def _projection(dim: int, k: int, seed: int, name: str, side: str) -> torch.Tensor:
    return torch.eye(dim, dtype=torch.float64) if dim <= k else _gaussian(k, dim, seed, name, side)


def _matrix_kind(module: nn.Module) -> tuple[bool, str]:
    """(transposed, family) of a tracked module owning a matrix weight."""
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover
        Conv1D = ()  # type: ignore[assignment]
    if isinstance(module, nn.Embedding):
        return False, "embedding"
    if Conv1D and isinstance(module, Conv1D):
        return True, "matmul"
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return False, "matmul"
    raise UnsupportedLayerError(f"{type(module).__name__} has a matrix parameter the sketches do not handle")


class Projections:
    """All parameters' projections and their slots in the flat sketch vector (length `dim`)."""

    def __init__(self, slots: list[ParamSlot], matrices: dict[str, torch.Tensor], seed: int, kind: str = "gaussian",
                 skipped: tuple[str, ...] = ()):
        self.slots = slots
        self.skipped = tuple(skipped)  # parameters left out of the sketch on purpose (skip_embeddings)
        self.by_name = {slot.name: slot for slot in slots}
        self.matrices = matrices  # "<param>.out" / "<param>.in" / "<param>.vec" -> (k, dim) float64
        self.seed = seed
        self.kind = kind  # "gaussian" (regenerated from the seed) or "pca" (estimated; only the stored file holds it)
        self.dim = sum(slot.size for slot in slots)
        self._cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def with_matrices(self, replaced: dict[str, torch.Tensor], kind: str) -> "Projections":
        """Same slots (so the same sketch layout and dim), some matrices replaced (e.g. by PCA sides)."""
        for key, q in replaced.items():
            if key not in self.matrices or tuple(q.shape) != tuple(self.matrices[key].shape):
                raise ValueError(f"projection {key}: shape {tuple(q.shape)} does not fit the slot layout")
        return Projections(self.slots, {**self.matrices, **{k: v.to(torch.float64) for k, v in replaced.items()}},
                           self.seed, kind, self.skipped)

    @classmethod
    def from_settings(cls, model: nn.Module, settings: dict[str, Any]) -> "Projections":
        """The Gaussian projections a store's settings (query.sketch_settings) describe."""
        return cls.build(model, settings["k_out"], settings["k_in"], settings["k_vector"], settings["seed"],
                         skip_embeddings=bool(settings.get("skip_embeddings", False)))

    @classmethod
    def build(cls, model: nn.Module, k_out: int, k_in: int, k_vector: int, seed: int,
              skip_embeddings: bool = False) -> "Projections":
        """One slot per trainable parameter of the engine's tracked modules, in named_parameters order.

        skip_embeddings: leave embedding matrices (token and position tables, and an output head tied to
        the token table) out of the sketch: their per-row blocks are the noisiest part of a sketch dot and
        leaving them out measured better on the demo run (docs/posthoc.md); their values are not estimated."""
        from provenance.engine.registry import tracked_modules

        owners: dict[int, nn.Module] = {}
        for _, module, rule in tracked_modules(model):
            for pname, p in module.named_parameters(recurse=False):
                if p.requires_grad and pname in rule.param_names and id(p) not in owners:
                    owners[id(p)] = module
        slots: list[ParamSlot] = []
        matrices: dict[str, torch.Tensor] = {}
        skipped: list[str] = []
        offset = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if id(p) not in owners:
                raise UnsupportedLayerError(
                    f"parameter {name} belongs to no module the engine tracks; sketches would miss its gradient"
                )
            if p.dim() >= 2:
                transposed, family = _matrix_kind(owners[id(p)])
                if skip_embeddings and family == "embedding":
                    skipped.append(name)
                    continue
                out_dim = p.shape[1] if transposed else p.shape[0]
                in_dim = p.shape[0] if transposed else int(p[0].numel())
                ko, ki = min(k_out, out_dim), min(k_in, in_dim)
                matrices[f"{name}.out"] = _projection(out_dim, k_out, seed, name, "out")
                matrices[f"{name}.in"] = _projection(in_dim, k_in, seed, name, "in")
                slot = ParamSlot(name, tuple(p.shape), "matrix", transposed, out_dim, in_dim, ko, ki, offset)
            else:
                kv = min(k_vector, p.numel())
                matrices[f"{name}.vec"] = _projection(p.numel(), k_vector, seed, name, "vec")
                slot = ParamSlot(name, tuple(p.shape), "vector", False, p.numel(), 0, kv, 0, offset)
            slots.append(slot)
            offset += slot.size
        return cls(slots, matrices, seed, skipped=tuple(skipped))

    def q(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """A projection matrix in the compute dtype (cached)."""
        cached = self._cache.get((key, dtype))
        if cached is None:
            cached = self._cache[(key, dtype)] = self.matrices[key].to(dtype).contiguous()
        return cached

    def canonical(self, slot: ParamSlot, grad: torch.Tensor) -> torch.Tensor:
        """A parameter-shaped gradient as (out, in) (matrices) or flat (vectors)."""
        if slot.kind == "vector":
            return grad.reshape(-1)
        return grad.T if slot.transposed else grad.reshape(slot.out_dim, slot.in_dim)

    def project_full(self, grads: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Sketch of whole parameter-shaped gradients (the query side): (dim,)."""
        out = torch.zeros(self.dim, dtype=dtype)
        for slot in self.slots:
            g = grads.get(slot.name)
            if g is None:
                continue
            g = self.canonical(slot, g.to(dtype))
            if slot.kind == "vector":
                block = self.q(f"{slot.name}.vec", dtype) @ g
            else:
                block = self.q(f"{slot.name}.out", dtype) @ g @ self.q(f"{slot.name}.in", dtype).T
            out[slot.offset : slot.offset + slot.size] = block.reshape(-1)
        return out

    def settings(self) -> dict[str, Any]:
        """What a store must match to be reused with these projections (estimated ones: their exact bytes)."""
        out = {"seed": self.seed, "dim": self.dim, "slots": [slot.to_json() for slot in self.slots]}
        if self.skipped:
            out["skipped"] = list(self.skipped)
        if self.kind != "gaussian":
            out["kind"] = self.kind
            out["matrices_sha256"] = matrices_sha256(self.matrices)
        return out

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()


def matrices_sha256(matrices: dict[str, torch.Tensor]) -> str:
    """Hash of every projection matrix's name, shape and float64 bytes (estimated projections' identity)."""
    digest = hashlib.sha256()
    for key in sorted(matrices):
        q = matrices[key].detach().to(torch.float64).contiguous()
        digest.update(f"{key}:{list(q.shape)}".encode())
        digest.update(q.numpy().tobytes())
    return digest.hexdigest()


def top_eigenvectors(y: torch.Tensor, omega: torch.Tensor | None, k: int) -> torch.Tensor:
    """(k, n) orthonormal rows spanning the top-k eigenvectors of a PSD matrix C known through Y = C Omega.

    omega None: y is C itself (eigh). Otherwise the single-pass Nystrom approximation
    C ~ Y (Omega^T Y)^+ Y^T (Tropp, Yurtsever, Udell, Cevher 2017), with a tiny shift for stability."""
    y = y.to(torch.float64)
    if float(y.abs().max()) == 0.0:
        raise ValueError("the covariance is zero: the calibration window saw no gradient on this side")
    if omega is None:
        sym = (y + y.T) / 2
        _, vectors = torch.linalg.eigh(sym)
        return vectors[:, -k:].flip(1).T.contiguous()
    omega = omega.to(torch.float64)
    nu = y.shape[0] ** 0.5 * torch.finfo(torch.float64).eps * float(torch.linalg.matrix_norm(y))
    y_nu = y + nu * omega
    b = omega.T @ y_nu
    w, v = torch.linalg.eigh((b + b.T) / 2)
    keep = w > w.max() * 1e-12
    f = y_nu @ (v[:, keep] / w[keep].sqrt())
    u, _, _ = torch.linalg.svd(f, full_matrices=False)
    if u.shape[1] < k:
        raise ValueError(f"the covariance has rank {u.shape[1]} < k = {k}; calibrate on more steps or lower k")
    return u[:, :k].T.contiguous()


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the architecture (parameter names, shapes, dtypes) and the model's config, not its weights."""
    config = getattr(model, "config", None)
    described = {
        "params": [[name, list(p.shape), str(p.dtype)] for name, p in model.named_parameters()],
        "config": {k: v for k, v in sorted(config.to_dict().items()) if k in _CONFIG_KEYS} if config is not None else {},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


_CONFIG_KEYS = {"model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                "activation_function", "layer_norm_epsilon", "scale_attn_weights", "tie_word_embeddings"}
