"""Per-layer attribution rules, registered by module class (in the spirit of Opacus' grad-sample registry).

A rule knows, for one module type, how to (1) keep what the forward pass must leave behind, (2) form the
per-row gradient of one of the module's parameters from that and the gradient of the module's output, and
(3) contract per-row gradients with K target directions z without necessarily forming them. Every rule has
the same signatures, so the engine's contraction code is one loop over parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedLayerError

_RULES: dict[type, "LayerRule"] = {}


class LayerRule:
    """Base class. `saved` is whatever `capture` returned; `grad` is dL/d(output) for the rows."""

    param_names: tuple[str, ...] = ("weight", "bias")

    def check(self, module: nn.Module, name: str) -> None:
        """Raise UnsupportedLayerError for options this rule cannot handle exactly."""

    def capture(self, module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        raise NotImplementedError

    def rows(self, saved: Any) -> int:
        raise NotImplementedError

    def grads(
        self,
        module: nn.Module,
        pname: str,
        saved: Any,
        grad: torch.Tensor,
        dtype: torch.dtype,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-row gradient of parameter `pname`: (rows, *param.shape). `out`, when given, is a flat buffer of
        at least that many elements that the rule may write the result into (a reused buffer saves the page
        faults of fresh memory of K x parameter size); the result may or may not live in it."""
        raise NotImplementedError

    def add_grads(self, module: nn.Module, pname: str, saved: Any, grad: torch.Tensor, into: torch.Tensor) -> None:
        """into += per-row gradient (same shape as `grads` returns): tied weights sum their uses' parts."""
        into.add_(self.grads(module, pname, saved, grad, into.dtype))

    def owns_grad(self, pname: str) -> bool:
        """True if the engine forms this parameter's batch gradient itself (per-row blocks, then summed)
        instead of autograd: then the per-row gradients it needs cost no extra matmul."""
        return False

    def grad_and_dot(
        self, module: nn.Module, pname: str, saved: Any, grad: torch.Tensor, z: torch.Tensor | None, budget_elems: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For owned parameters: (sum of the rows' gradients in the parameter's dtype, (rows, K) dots or None)."""
        raise NotImplementedError

    def keeps_rows(self, pname: str) -> bool:
        """True if this parameter's per-row gradients are small or dense enough to keep from backward to
        the after route (the "stored" route) instead of re-deriving them from kept activations."""
        return True

    def grad_and_rows(
        self, module: nn.Module, pname: str, saved: Any, grad: torch.Tensor, reuse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For owned parameters on the stored route: (the rows' gradient sum, the per-row gradients in the
        layout `dot_rows` reads). reuse=True: the per-row gradients may live in a buffer that the rule's
        next call overwrites (used at once, not kept)."""
        raise NotImplementedError

    def dot_rows(self, module: nn.Module, pname: str, per_row: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(rows, K) dots of kept per-row gradients with K target directions z (K, *param.shape)."""
        rows = per_row.shape[0]
        return per_row.reshape(rows, -1).to(z.dtype) @ z.reshape(z.shape[0], -1).T

    def dot(
        self,
        module: nn.Module,
        pname: str,
        saved: Any,
        grad: torch.Tensor,
        z: torch.Tensor,
        per_token: bool,
        budget_elems: int,
    ) -> tuple[torch.Tensor, str]:
        """(rows, K) — or (rows, tokens, K) when per_token — of g_row . z_k, and the route used."""
        raise NotImplementedError


def register(*module_types: type):
    """Class decorator: register a rule instance for these module classes."""

    def wrap(rule_cls: type[LayerRule]) -> type[LayerRule]:
        for module_type in module_types:
            _RULES[module_type] = rule_cls()
        return rule_cls

    return wrap


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for this exact module class (subclasses must be registered on their own)."""
    return _RULES.get(type(module))


def registered_types() -> list[str]:
    return sorted(t.__name__ for t in _RULES)


def tracked_modules(model: nn.Module) -> list[tuple[str, nn.Module, LayerRule]]:
    """Modules whose trainable parameters the engine attributes; refuse any parameter left uncovered.

    A trainable parameter that no rule covers would silently get a zero value, so it is an error that
    names the module and the parameter.
    """
    tracked: list[tuple[str, nn.Module, LayerRule]] = []
    covered: set[int] = set()
    for name, module in model.named_modules():
        direct = [(pname, p) for pname, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not direct:
            continue
        rule = rule_for(module)
        if rule is None:
            continue
        rule.check(module, name)
        for pname, p in direct:
            if pname in rule.param_names:
                covered.add(id(p))
        tracked.append((name, module, rule))
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in covered:
                where = mname or "<root module>"
                raise UnsupportedLayerError(
                    f"trainable parameter '{pname}' of module '{where}' ({type(module).__name__}) has no "
                    f"attribution rule, so its contribution would be silently lost. Supported modules: "
                    f"{', '.join(registered_types())}. Freeze it (requires_grad=False) or register a rule "
                    "with provenance.engine.registry.register."
                )
    return tracked
