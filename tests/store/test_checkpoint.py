"""An AdamW checkpoint (safetensors + JSON, no pickle) restores training exactly."""

from __future__ import annotations

import torch

from provenance.store.checkpoint import load_checkpoint, save_checkpoint
from provenance.store.run_dir import RunDirectory


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), foreach=False)
    return model, opt


def _train(model, opt, steps, start=0):
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(5, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = 1e-2 / (1 + i)
        opt.step()


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    model, opt = _setup()
    _train(model, opt, 6)
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt = _setup()
    _train(model, opt, 3)
    run = RunDirectory(tmp_path)
    save_checkpoint(run, 3, model, opt, {"note": "x"})
    assert run.checkpoint_steps() == [3]
    model2, opt2 = _setup(seed=123)  # different init: everything must come from the checkpoint
    state = load_checkpoint(run, 3, model2, opt2)
    assert state == {"note": "x", "step": 3}
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95) and opt2.param_groups[1]["weight_decay"] == 0.0
    _train(model2, opt2, 3, start=3)
    assert all(torch.equal(a, b.detach()) for a, b in zip(expected, model2.parameters()))
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "step_000003").iterdir())
    assert files == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "state.json"]
