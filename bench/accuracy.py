"""Small-scale evaluation of In-Run Data Shapley (the paper's sanity checks, on CPU in minutes).

Two experiments on scikit-learn's digits (8x8 images, ships with the package), with a small CNN (Conv2d):

1. Mislabel detection. 1,000 training points, 10% of their labels flipped to another class. One training
   run with the engine attached (order 2, so first- and second-order values come from the same run);
   the target is the loss on K clean validation points (K columns, summed and divided by K = the mean
   validation loss); each point's values are summed over all steps. Mislabeled points should get low or
   negative values, so the score is -value and we print the AUROC for the "was flipped" indicator,
   next to a baseline that needs no attribution: each point's training loss at the end.

2. Agreement with retraining-based Data Shapley. A subset of players (30 training points). The game:
   "train from the same initialization with full-batch gradient descent on the points of S (mean loss over
   S) for T steps; U(S) = mean validation loss at init - mean validation loss after". Its Shapley values
   are estimated by permutation sampling with antithetic pairs (every prefix of every permutation is
   retrained, so no truncation is needed; the prefixes are trained together as one batched model). The
   in-run values are those of the engine attached to the same training on all the subset's points. We
   print Spearman correlations, the Monte Carlo standard error and its split-half stability.

See docs/evaluation.md for what the numbers mean.

    python bench/accuracy.py           # table (about 5-10 minutes on 2 cores)
    python bench/accuracy.py --json    # one JSON line
    python bench/accuracy.py --quick   # a small run for smoke tests (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from provenance.engine import AttributionEngine, ClassificationTask, EngineConfig

N_CLASSES = 10


@dataclass(frozen=True)
class Settings:
    """Sizes and hyperparameters of one evaluation (two presets below)."""

    n_train: int = 1000
    flip_fraction: float = 0.10
    n_val_targets: int = 100  # clean validation points used as engine targets (one column each)
    n_test: int = 300  # held out, only for reporting accuracy
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.05
    max_grad_norm: float | None = 5.0
    # Monte Carlo part
    n_players: int = 30
    subset_steps: int = 30
    subset_lr: float = 0.05
    permutations: int = 200  # even: antithetic pairs
    permutation_chunk: int = 20  # permutations whose prefixes are trained together
    seed: int = 0


FULL = Settings()
QUICK = Settings(
    n_train=120, n_val_targets=12, n_test=60, epochs=2, batch_size=16,
    n_players=8, subset_steps=5, permutations=20, permutation_chunk=10,
)


# -- data ---------------------------------------------------------------------------------------------
@dataclass
class Digits:
    x_train: torch.Tensor  # (n, 1, 8, 8)
    y_train: torch.Tensor  # noisy labels, the ones trained on
    y_clean: torch.Tensor
    flipped: torch.Tensor  # bool (n,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def flip_labels(labels: torch.Tensor, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip round(fraction * n) labels, each to a different class drawn uniformly; returns (labels, mask)."""
    n = labels.shape[0]
    chosen = torch.randperm(n, generator=generator)[: round(fraction * n)]
    shift = torch.randint(1, N_CLASSES, (chosen.shape[0],), generator=generator)
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen] + shift) % N_CLASSES
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return noisy, mask


def load_split(settings: Settings) -> Digits:
    """Shuffle the 1,797 digits with the seed; train / validation targets / test are disjoint."""
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = (x - 0.3) / 0.35  # roughly zero mean, unit variance over the data set
    y = torch.tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(x.shape[0], generator=generator)
    needed = settings.n_train + settings.n_val_targets + settings.n_test
    if needed > x.shape[0]:
        raise ValueError(f"Settings ask for {needed} points but digits has {x.shape[0]}; lower n_train/n_val/n_test")
    tr, va, te = (order[: settings.n_train], order[settings.n_train : settings.n_train + settings.n_val_targets],
                  order[settings.n_train + settings.n_val_targets : needed])
    noisy, flipped = flip_labels(y[tr], settings.flip_fraction, generator)
    return Digits(x[tr], noisy, y[tr], flipped, x[va], y[va], x[te], y[te])


# -- model --------------------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    """Conv2d(1->8, 3x3) + ReLU + 2x2 max-pool + Linear(128->32) + ReLU + Linear(32->10). No batch norm:
    rows must not interact for per-row values to be defined."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.hidden = nn.Linear(8 * 4 * 4, 32)
        self.head = nn.Linear(32, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.head(F.relu(self.hidden(h.flatten(1))))


def build_model(seed: int) -> DigitsCNN:
    torch.manual_seed(seed)
    return DigitsCNN()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


# -- experiment 1: in-run values of the full run, mislabel detection ----------------------------------
@dataclass
class RunValues:
    first: torch.Tensor  # (n,) values summed over steps, unit = mean validation loss, + = lowered it
    second: torch.Tensor
    final_train_loss: torch.Tensor  # (n,) per point, at the end, against its (noisy) training label
    test_accuracy: float
    val_loss_start: float
    val_loss_end: float
    steps: int
    auroc_by_epoch: list[tuple[float, float]]  # (first, second order) AUROC of the values summed so far


def in_run_values(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor],
    max_grad_norm: float | None,
    progress: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train over `batches` (index tensors into x, y), one step each; return each point's first- and
    second-order value summed over steps, targets' columns averaged (value of the mean target loss)."""
    first = torch.zeros(x.shape[0], dtype=torch.float64)
    second = torch.zeros(x.shape[0], dtype=torch.float64)
    config = EngineConfig(order=2, max_grad_norm=max_grad_norm, loss_reduction="sample_mean")
    with AttributionEngine(model, optimizer, config, task=ClassificationTask()) as engine:
        engine.set_targets(targets)
        for index in tqdm(batches, desc=progress, disable=progress is None, leave=False):
            result = engine.step((x[index], y[index]))
            # rows of the step are the batch's points in order: map them back to training indices
            first.index_add_(0, index, result.values_first.double().mean(dim=1))
            second.index_add_(0, index, result.values_second.double().mean(dim=1))
    return first, second


def epoch_batches(n: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """Shuffled mini-batches of training indices, epoch after epoch (fixed by the seed)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        out.extend(order[i : i + batch_size] for i in range(0, n, batch_size))
    return out


def run_full(settings: Settings, data: Digits, progress: bool = True) -> RunValues:
    model = build_model(settings.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
    with torch.no_grad():
        val_start = float(F.cross_entropy(model(data.x_val), data.y_val))
    batches = epoch_batches(settings.n_train, settings.batch_size, settings.epochs, settings.seed + 1)
    per_epoch = math.ceil(settings.n_train / settings.batch_size)
    first = torch.zeros(settings.n_train, dtype=torch.float64)
    second = torch.zeros(settings.n_train, dtype=torch.float64)
    by_epoch = []
    for epoch in tqdm(range(settings.epochs), desc="in-run values, epochs", disable=not progress, leave=False):
        f, s = in_run_values(model, optimizer, batches[epoch * per_epoch : (epoch + 1) * per_epoch],
                             data.x_train, data.y_train, (data.x_val, data.y_val), settings.max_grad_norm)
        first += f
        second += s
        by_epoch.append((auroc(-first, data.flipped), auroc(-second, data.flipped)))
    with torch.no_grad():
        train_loss = F.cross_entropy(model(data.x_train), data.y_train, reduction="none")
        val_end = float(F.cross_entropy(model(data.x_val), data.y_val))
    return RunValues(first, second, train_loss.double(), accuracy(model, data.x_test, data.y_test),
                     val_start, val_end, len(batches), by_epoch)


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for the boolean `positives` (higher score = more positive)."""
    return float(roc_auc_score(positives.numpy().astype(int), scores.numpy()))


# -- experiment 2: Monte Carlo (retraining) Shapley on a subset ---------------------------------------
def batched_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DigitsCNN's forward for M models at once (params stacked on a leading dim M): logits (M, n, 10).
    The images are shared by all models, so the convolution is one unfold and one einsum."""
    models, n = params["conv.weight"].shape[0], x.shape[0]
    patches = F.unfold(x, kernel_size=3, padding=1)  # (n, 9, 64)
    conv = torch.einsum("mck,nkp->mncp", params["conv.weight"].reshape(models, 8, 9), patches)
    conv = conv + params["conv.bias"][:, None, :, None]
    # 2x2 max-pool as a max over reshaped blocks (several times faster than max_pool2d on this shape;
    # ties only occur at ReLU zeros, where the gradient is zero either way)
    rows = F.relu(conv).reshape(models * n * 8, 8, 4, 2).amax(dim=3)  # pool along x, then along y
    pooled = rows.reshape(models * n * 8, 4, 2, 4).amax(dim=2).reshape(models, n, 128)
    hidden = F.relu(torch.einsum("mnj,moj->mno", pooled, params["hidden.weight"]) + params["hidden.bias"][:, None])
    return torch.einsum("mnj,moj->mno", hidden, params["head.weight"]) + params["head.bias"][:, None]


def retrain_utilities(
    model: DigitsCNN,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    steps: int,
    lr: float,
    val: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """U(S) for each row of `masks` (subsets, players) bool: full-batch GD on the points of S (mean loss over
    S) from `model`'s weights for `steps` steps; U = val loss at init - val loss after. U(empty set) = 0.
    All subsets are trained at once (models are independent, so the gradient of the summed loss is each
    model's own gradient); each equals the plain training loop (the smoke test checks it)."""
    weights = masks.to(x.dtype)
    counts = weights.sum(dim=1)
    nonempty = counts > 0
    weights = weights[nonempty] / counts[nonempty, None]
    m = weights.shape[0]
    params = {name: p.detach()[None].repeat(m, *([1] * p.dim())).requires_grad_(True)
              for name, p in model.named_parameters()}
    targets = y.expand(m, -1).reshape(-1)
    for _ in range(steps):
        logits = batched_forward(params, x)
        losses = F.cross_entropy(logits.reshape(-1, N_CLASSES), targets, reduction="none").reshape(m, -1)
        grads = torch.autograd.grad((losses * weights).sum(), list(params.values()))
        with torch.no_grad():
            params = {name: (p - lr * g).requires_grad_(True) for (name, p), g in zip(params.items(), grads)}
    with torch.no_grad():
        start = F.cross_entropy(model(val[0]), val[1])
        logits = batched_forward(params, val[0])
        end = F.cross_entropy(logits.reshape(-1, N_CLASSES), val[1].expand(m, -1).reshape(-1),
                              reduction="none").reshape(m, -1).mean(dim=1)
    out = torch.zeros(masks.shape[0], dtype=torch.float64)
    out[nonempty] = (start - end).double()
    return out


def permutation_shapley(
    n_players: int,
    permutations: int,
    chunk: int,
    seed: int,
    utility,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Permutation-sampling Shapley: for each random permutation, the marginal contribution of every player
    to the prefix before it. Permutations come in antithetic pairs (a permutation and its reverse), a
    standard variance reduction; the standard error is taken over the pairs, the independent samples.
    `utility(masks) -> (rows,)` values many subsets at once. Returns (mean, standard error, marginals
    (permutations, players), pairs adjacent)."""
    if permutations < 4 or permutations % 2 or chunk < 2 or chunk % 2:
        raise ValueError(f"permutations ({permutations}) and chunk ({chunk}) must be even (antithetic pairs), "
                         "permutations >= 4")
    generator = torch.Generator().manual_seed(seed)
    marginals = torch.zeros(permutations, n_players, dtype=torch.float64)
    done = 0
    bar = tqdm(total=permutations, desc="Monte Carlo permutations", disable=not progress, leave=False)
    while done < permutations:
        take = min(chunk, permutations - done)
        drawn = [torch.randperm(n_players, generator=generator) for _ in range(take // 2)]
        perms = torch.stack([p for d in drawn for p in (d, d.flip(0))])  # antithetic pairs
        # prefix masks: row (p, j) holds the first j players of permutation p, j = 0..n
        ranks = torch.empty_like(perms)
        ranks.scatter_(1, perms, torch.arange(n_players).expand(take, n_players))
        masks = ranks[:, None, :] < torch.arange(n_players + 1)[None, :, None]
        values = utility(masks.reshape(-1, n_players)).reshape(take, n_players + 1)
        gains = values[:, 1:] - values[:, :-1]  # gain of adding the player at position j
        marginals[done : done + take].scatter_(1, perms, gains)
        done += take
        bar.update(take)
    bar.close()
    mean = marginals.mean(dim=0)
    pairs = marginals.reshape(permutations // 2, 2, n_players).mean(dim=1)  # the independent samples
    stderr = pairs.std(dim=0, unbiased=True) / math.sqrt(pairs.shape[0])
    return mean, stderr, marginals


@dataclass
class SubsetComparison:
    players: torch.Tensor  # training indices of the players
    monte_carlo: torch.Tensor
    monte_carlo_stderr: torch.Tensor
    split_half_spearman: float  # MC estimate from one half of the permutations vs the other half
    in_run_first: torch.Tensor
    in_run_second: torch.Tensor
    full_run_first: torch.Tensor  # the same players' values in the 1,000-point run (a different game)
    grand_utility: float


def run_subset(settings: Settings, data: Digits, full: RunValues | None, progress: bool = True) -> SubsetComparison:
    generator = torch.Generator().manual_seed(settings.seed + 2)
    players = torch.randperm(settings.n_train, generator=generator)[: settings.n_players].sort().values
    x, y = data.x_train[players], data.y_train[players]
    val = (data.x_val, data.y_val)
    init = build_model(settings.seed + 3)

    def utility(masks: torch.Tensor) -> torch.Tensor:
        return retrain_utilities(init, x, y, masks, settings.subset_steps, settings.subset_lr, val)

    mc, se, marginals = permutation_shapley(
        settings.n_players, settings.permutations, settings.permutation_chunk, settings.seed + 4, utility, progress
    )
    half = 2 * (settings.permutations // 4)  # whole antithetic pairs on each side
    split = float(spearmanr(marginals[:half].mean(0), marginals[half:].mean(0)).statistic)
    grand = float(utility(torch.ones(1, settings.n_players, dtype=torch.bool))[0])

    # the same training (full batch, same init, same lr and steps) with the engine attached
    model = build_model(settings.seed + 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.subset_lr)
    everyone = torch.arange(settings.n_players)
    first, second = in_run_values(model, optimizer, [everyone] * settings.subset_steps, x, y, val, None)
    full_first = full.first[players] if full is not None else torch.full((settings.n_players,), float("nan"))
    return SubsetComparison(players, mc, se, split, first, second, full_first, grand)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


# -- report -------------------------------------------------------------------------------------------
def evaluate(settings: Settings, progress: bool = True) -> dict:
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    data = load_split(settings)
    full = run_full(settings, data, progress)
    flipped = data.flipped
    t_full = time.perf_counter() - start
    sub = run_subset(settings, data, full, progress)
    t_total = time.perf_counter() - start
    span = float(sub.monte_carlo.max() - sub.monte_carlo.min())
    return {
        "auroc_first_order": auroc(-full.first, flipped),
        "auroc_second_order": auroc(-full.second, flipped),
        "auroc_baseline_final_train_loss": auroc(full.final_train_loss, flipped),
        "spearman_vs_monte_carlo": spearman(sub.in_run_first, sub.monte_carlo),
        "spearman_second_order_vs_monte_carlo": spearman(sub.in_run_second, sub.monte_carlo),
        "spearman_full_run_vs_monte_carlo": spearman(sub.full_run_first, sub.monte_carlo),
        "spearman_first_vs_second_order_full_run": spearman(full.first, full.second),
        "monte_carlo_split_half_spearman": sub.split_half_spearman,
        "monte_carlo_mean_stderr": float(sub.monte_carlo_stderr.mean()),
        "monte_carlo_value_range": span,
        "monte_carlo_grand_utility": sub.grand_utility,
        "monte_carlo_sum_of_values": float(sub.monte_carlo.sum()),
        "in_run_subset_sum_second_order": float(sub.in_run_second.sum()),
        "subset_flipped_players": int(flipped[sub.players].sum()),
        "auroc_first_order_by_epoch": [round(a, 4) for a, _ in full.auroc_by_epoch],
        "auroc_second_order_by_epoch": [round(b, 4) for _, b in full.auroc_by_epoch],
        "test_accuracy": full.test_accuracy,
        "val_loss_start": full.val_loss_start,
        "val_loss_end": full.val_loss_end,
        "sum_first_order_values": float(full.first.sum()),
        "sum_second_order_values": float(full.second.sum()),
        "steps": full.steps,
        "wall_seconds_full_run": round(t_full, 1),
        "wall_seconds_total": round(t_total, 1),
        "settings": asdict(settings),
    }


def print_table(r: dict) -> None:
    s = r["settings"]
    rows = [
        ("Mislabel detection", f"{s['n_train']} digits, {s['flip_fraction']:.0%} flipped, {r['steps']} SGD steps, "
                               f"{s['n_val_targets']} validation targets", ""),
        ("  AUROC, -first-order in-run value", f"{r['auroc_first_order']:.3f}", "bar >= 0.8"),
        ("  AUROC, -second-order in-run value", f"{r['auroc_second_order']:.3f}", "bar >= 0.8"),
        ("  AUROC, baseline: final training loss", f"{r['auroc_baseline_final_train_loss']:.3f}", "no attribution"),
        ("  AUROC by epoch, first order", " ".join(f"{a:.2f}" for a in r["auroc_first_order_by_epoch"]), "values so far"),
        ("  AUROC by epoch, second order", " ".join(f"{a:.2f}" for a in r["auroc_second_order_by_epoch"]), ""),
        ("  test accuracy (trained on noisy labels)", f"{r['test_accuracy']:.3f}", ""),
        ("  mean val loss start -> end", f"{r['val_loss_start']:.3f} -> {r['val_loss_end']:.3f}", ""),
        ("  sum of values, first / second order",
         f"{r['sum_first_order_values']:.3f} / {r['sum_second_order_values']:.3f}", "vs the drop above"),
        ("Monte Carlo Shapley", f"{s['n_players']} players ({r['subset_flipped_players']} flipped), "
                                f"{s['permutations']} permutations, {s['subset_steps']} full-batch GD steps", ""),
        ("  Spearman, in-run first order vs MC", f"{r['spearman_vs_monte_carlo']:.3f}", "same training"),
        ("  Spearman, in-run second order vs MC", f"{r['spearman_second_order_vs_monte_carlo']:.3f}", "same training"),
        ("  Spearman, 1,000-point run values vs MC", f"{r['spearman_full_run_vs_monte_carlo']:.3f}", "different game"),
        ("  MC split-half Spearman", f"{r['monte_carlo_split_half_spearman']:.3f}", "MC's own stability"),
        ("  MC mean standard error / value range",
         f"{r['monte_carlo_mean_stderr']:.4f} / {r['monte_carlo_value_range']:.4f}", ""),
        ("  U(all players) = sum of MC values",
         f"{r['monte_carlo_grand_utility']:.4f} = {r['monte_carlo_sum_of_values']:.4f}", "efficiency"),
        ("  sum of in-run second-order values", f"{r['in_run_subset_sum_second_order']:.4f}", ""),
        ("Wall time", f"{r['wall_seconds_total']:.0f} s (full run {r['wall_seconds_full_run']:.0f} s)",
         f"torch threads {r['torch_threads']}"),
    ]
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:<28} {c}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.add_argument("--quick", action="store_true", help="a small run (seconds), for smoke tests")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads [1: the figures in docs/evaluation.md were measured with 1; "
                             "more threads on a shared 2-core machine oversubscribe it]")
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = evaluate(QUICK if args.quick else FULL, progress=not args.json)
        result["torch_threads"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
