"""Sample from a trained run's model (the outputs that `attribute` then explains)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from provenance.errors import RunDirectoryError, TargetError
from provenance.store.run_dir import RunDirectory


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 48
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 40  # 0 = no top-k filter
    seed: int = 0  # sampling is reproducible: same seed, same output


def load_run_model(run: RunDirectory) -> GPT2LMHeadModel:
    if not (run.model_dir / "model.safetensors").is_file():
        raise RunDirectoryError(f"{run.model_dir} has no model.safetensors; the run did not finish training")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a tiny local load needs no bar
    model = GPT2LMHeadModel.from_pretrained(str(run.model_dir))
    model.eval()
    return model


@torch.no_grad()
def generate(run_dir: str | Path, prompt: str, sampling: SamplingConfig | None = None) -> str:
    """Continue ``prompt`` with the run's final model; returns only the new text."""
    from provenance.data import eot_id, load_tokenizer

    sampling = sampling or SamplingConfig()
    run = RunDirectory.open(run_dir)
    model = load_run_model(run)
    tokenizer = load_tokenizer(run.tokenizer_path)
    # Every training document starts with <|endoftext|>: a prompt starts the same way.
    ids = [eot_id(tokenizer), *tokenizer.encode(prompt, add_special_tokens=False).ids]
    context = model.config.n_positions
    if len(ids) >= context:
        raise TargetError(f"the prompt is {len(ids)} tokens; the model's context is {context} tokens")
    generator = torch.Generator().manual_seed(sampling.seed)
    eos = eot_id(tokenizer)
    new: list[int] = []
    for _ in range(min(sampling.max_new_tokens, context - len(ids))):
        window = torch.tensor([ids + new])
        logits = model(input_ids=window, attention_mask=torch.ones_like(window)).logits[0, -1].double()
        if sampling.temperature <= 0:
            token = int(logits.argmax())
        else:
            logits = logits / sampling.temperature
            if sampling.top_k > 0:
                kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
        if eos is not None and token == eos:
            break
        new.append(token)
    return tokenizer.decode(new)
