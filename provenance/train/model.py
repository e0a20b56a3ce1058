"""Model and optimizer construction: GPT-2 from a config (no download) and AdamW with decay groups."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from provenance.config import ModelConfig, TrainConfig


def gpt2_config(cfg: ModelConfig, vocab_size: int, eos_id: int | None = None) -> GPT2Config:
    """Dropout is off: every forward pass is a pure function of the weights, which replay relies on."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.context_length,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    config._attn_implementation = cfg.attn_implementation
    return config


def build_model(cfg: ModelConfig, vocab_size: int, seed: int, eos_id: int | None = None) -> GPT2LMHeadModel:
    """A fresh GPT-2 whose initial weights depend only on (config, vocab size, seed)."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(cfg, vocab_size, eos_id))
    model.train()
    return model


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, LayerNorm scales: none), as in GPT-2/nanoGPT.

    foreach/fused are off so the update is the plain per-parameter loop the engine linearizes.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=False
    )
