"""Tiny float64 models and seeded batches shared by the engine tests."""

from __future__ import annotations

import os
import types
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

VOCAB = 97
CONTEXT = 32
N_CLASSES = 3
IMAGE = (1, 8, 8)


def build_gpt2(seed: int = 0) -> nn.Module:
    """2 layers, n_embd 32, 2 heads: Conv1D, tied wte/lm_head, learned wpe, LayerNorm, biases."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=1,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config).to(torch.float64)


def _eager_attention_in_input_dtype(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Llama's eager attention with the softmax kept in the input dtype.

    Why: transformers' Llama eager attention runs its softmax in float32 even for a float64 model, which
    limits every gradient to ~1e-7 relative precision (scaling the loss by 1/26 moves gradients by 6e-8).
    Exactness tests need true float64; SDPA cannot be used because its mask logic breaks torch.func.vmap."""
    groups = module.num_key_value_groups
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


AttentionInterface.register("eager_float64", _eager_attention_in_input_dtype)
# without a registered mask function transformers passes no mask at all (the model would not be causal)
AttentionMaskInterface.register("eager_float64", eager_mask)


def build_llama(seed: int = 0) -> nn.Module:
    """2 layers, hidden 32, grouped-query attention, RMSNorm, untied head, no biases."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=None,
        attn_implementation="eager_float64",
    )
    model = LlamaForCausalLM(config).to(torch.float64)
    for module in model.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            module.forward = types.MethodType(_rms_norm_in_input_dtype, module)
    return model


def _rms_norm_in_input_dtype(self: nn.Module, hidden_states: Tensor) -> Tensor:
    """LlamaRMSNorm's maths (w * x / sqrt(mean(x^2) + eps)) without its float32 round trip.

    Why: the stock forward casts to float32, limiting gradients to ~1e-7 relative precision. The module
    stays a LlamaRMSNorm (so the engine's rule for that class is the one tested); only precision changes."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


class TinyCNN(nn.Module):
    """Conv2d + ReLU + max-pool + flatten + Linear: the non-language-model case."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(IMAGE[0], 4, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * (IMAGE[1] // 2) * (IMAGE[2] // 2), N_CLASSES)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.pool(torch.relu(self.conv(inputs))).flatten(1))


def build_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN().to(torch.float64)


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "gpt2": build_gpt2,
    "llama": build_llama,
    "cnn": build_cnn,
}


def lm_batch(lengths: list[int], generator: torch.Generator) -> dict[str, Tensor]:
    """Right-padded rows of the given lengths; labels = input_ids on real tokens, -100 on padding."""
    width = max(lengths)
    input_ids = torch.randint(2, VOCAB, (len(lengths), width), generator=generator)
    attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
    input_ids = input_ids * attention_mask
    labels = torch.where(attention_mask.bool(), input_ids, torch.full_like(input_ids, -100))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def lm_targets(prompt_and_output: list[tuple[int, int]], generator: torch.Generator) -> dict[str, Tensor]:
    """Targets: a prompt (no loss) followed by an output (loss), right-padded."""
    batch = lm_batch([p + o for p, o in prompt_and_output], generator)
    for row, (prompt, _) in enumerate(prompt_and_output):
        batch["labels"][row, :prompt] = -100
    return batch


def image_batch(n_rows: int, generator: torch.Generator) -> dict[str, Tensor]:
    inputs = torch.randn((n_rows,) + IMAGE, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, N_CLASSES, (n_rows,), generator=generator)
    return {"inputs": inputs, "labels": labels}
