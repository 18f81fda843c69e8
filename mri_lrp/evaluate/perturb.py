"""Region perturbation in model space (Samek et al. 2017), batched: cubes replaced in MoRF / LeRF / random order.

A model input is handled in *volume form* ``(C, *spatial)``: a 3D model's input as it is, a slice model's
``(S, C, X, Y)`` as ``(C, S, X, Y)`` (cubes are then squares that span one slice). Every perturbation step of
every order is built by one vectorised comparison against a per-voxel rank map and scored in device batches, so
the cost is a few batched forwards per scan instead of one forward (and one Python loop over cubes) per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BASELINES = ("blur", "mean", "zero")
ORDERS = ("morf", "lerf", "random")

Scorer = Callable[[torch.Tensor], torch.Tensor]  # (K, C, *spatial) volume-form inputs -> (K,) target scores


@dataclass(frozen=True)
class Curves:
    """Target score after each step, per order; ``fractions[k]`` is the share of the volume replaced at step k."""

    fractions: torch.Tensor            # (L + 1,)
    scores: dict[str, torch.Tensor]    # order -> (L + 1,); "random" is the mean over the random repeats

    def aopc(self, order: str) -> float:
        """Area over the perturbation curve: mean over steps 0..L of (score before − score after step k)."""
        s = self.scores[order]
        return float((s[0] - s).mean())


def as_volume(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Model tensor of one scan -> volume form (C, *spatial)."""
    return x.transpose(0, 1) if dims == 2 else x


def as_model(v: torch.Tensor, dims: int) -> torch.Tensor:
    """Volume form (K, C, *spatial) -> the model's batch: (K, C, ...) for 3D, (K * S, C, X, Y) for slice models."""
    return v.transpose(1, 2).flatten(0, 1) if dims == 2 else v


def cube_grid(relevance: torch.Tensor, cube: tuple[int, ...]) -> torch.Tensor:
    """Relevance summed over channels and over each cube (edge cubes are partial): (n1, n2, n3)."""
    r = relevance.sum(0)
    pad = []
    for n, c in zip(reversed(r.shape), reversed(cube), strict=True):
        pad += [0, (-n) % c]
    r = F.pad(r, pad)
    shape = []
    for n, c in zip(r.shape, cube, strict=True):
        shape += [n // c, c]
    return r.reshape(shape).sum(dim=tuple(range(1, 2 * len(cube), 2)))


def order_ranks(scores: torch.Tensor, order: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rank of each cube (0 = replaced first): MoRF by descending relevance, LeRF ascending, random by a
    permutation. Ties keep index order, so the result is reproducible."""
    flat = scores.flatten().double()
    if order == "morf":
        idx = torch.sort(-flat, stable=True).indices
    elif order == "lerf":
        idx = torch.sort(flat, stable=True).indices
    elif order == "random":
        idx = torch.randperm(flat.numel(), generator=generator)
    else:
        raise ValueError(f"unknown order {order!r} (known: {', '.join(ORDERS)})")
    ranks = torch.empty_like(idx)
    ranks[idx] = torch.arange(idx.numel())
    return ranks.reshape(scores.shape)


def voxel_ranks(ranks: torch.Tensor, cube: tuple[int, ...], spatial: tuple[int, ...]) -> torch.Tensor:
    """Each voxel's cube rank, on the model grid."""
    v = ranks
    for axis, c in enumerate(cube):
        v = v.repeat_interleave(c, dim=axis)
    return v[tuple(slice(0, n) for n in spatial)]


def baseline_volume(v: torch.Tensor, kind: str, sigma: float) -> torch.Tensor:
    """What a replaced cube holds: a Gaussian blur of the input (σ in model voxels), its channel means, or 0."""
    if kind == "zero":
        return torch.zeros_like(v)
    if kind == "mean":
        return v.mean(dim=tuple(range(1, v.dim())), keepdim=True).expand_as(v).clone()
    if kind != "blur":
        raise ValueError(f"unknown baseline {kind!r} (known: {', '.join(BASELINES)})")
    radius = max(1, int(round(2 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64, device=v.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(v.dtype)
    out = v
    for axis in range(1, v.dim()):
        moved = out.movedim(axis, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        mode = "reflect" if moved.shape[-1] > radius else "replicate"
        flat = F.conv1d(F.pad(flat, (radius, radius), mode=mode), kernel.view(1, 1, -1))
        out = flat.reshape(moved.shape).movedim(-1, axis)
    return out


def perturbation_curves(v: torch.Tensor, relevance: torch.Tensor, scorer: Scorer, *, cube: tuple[int, ...],
                        steps: int, fraction: float, baseline: str, batch_size: int, random_repeats: int = 1,
                        seed: int = 0) -> Curves:
    """Score the input after 0..steps replacements in each order; each step replaces an equal number of cubes,
    so that ``fraction`` of all cubes are replaced at the last step."""
    spatial = tuple(v.shape[1:])
    grid = cube_grid(relevance.to(v.device), cube)
    n_cubes = grid.numel()
    per_step = max(1, round(fraction * n_cubes / steps))
    limits = torch.arange(steps + 1, device=v.device) * per_step
    base = baseline_volume(v, baseline, sigma=float(max(cube)))
    generator = torch.Generator().manual_seed(seed)
    plan = [("morf", order_ranks(grid, "morf")), ("lerf", order_ranks(grid, "lerf"))]
    plan += [("random", order_ranks(grid, "random", generator)) for _ in range(random_repeats)]

    # One flat list of (order, step) inputs, scored in chunks: the unperturbed input once, shared by all orders.
    jobs = [(name, voxel_ranks(r.to(v.device), cube, spatial)) for name, r in plan]
    pending = [(j, k) for j in range(len(jobs)) for k in range(1, steps + 1)]
    with torch.no_grad():
        first = scorer(v.unsqueeze(0))[0]
        out = torch.empty(len(jobs), steps + 1, dtype=torch.float64)
        out[:, 0] = float(first)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            masks = torch.stack([jobs[j][1] < limits[k] for j, k in chunk]).unsqueeze(1)
            batch = torch.where(masks, base.unsqueeze(0), v.unsqueeze(0))
            scores = scorer(batch).double().cpu()
            for (j, k), s in zip(chunk, scores, strict=True):
                out[j, k] = s
    curves = {"morf": out[0], "lerf": out[1], "random": out[2:].mean(0)}
    fractions = (limits.double().cpu() / n_cubes).clamp(max=1.0)
    return Curves(fractions, curves)


def perturbation_curves_loop(v: torch.Tensor, relevance: torch.Tensor, scorer: Scorer, *, cube: tuple[int, ...],
                             steps: int, fraction: float, baseline: str) -> dict[str, list[float]]:
    """The one-forward-per-step loop a user would write (Quantus-style): copy, replace cube by cube, score.
    Kept as the benchmark's baseline and as an independent check of the batched path (MoRF and LeRF)."""
    spatial = tuple(v.shape[1:])
    grid = cube_grid(relevance, cube)
    n_cubes = grid.numel()
    per_step = max(1, round(fraction * n_cubes / steps))
    base = baseline_volume(v, baseline, sigma=float(max(cube)))
    result: dict[str, list[float]] = {}
    with torch.no_grad():
        for order in ("morf", "lerf"):
            ranks = order_ranks(grid, order).flatten()
            by_rank = torch.argsort(ranks)
            x = v.clone()
            scores = [float(scorer(x.unsqueeze(0))[0])]
            for k in range(1, steps + 1):
                for flat_index in by_rank[(k - 1) * per_step:k * per_step].tolist():
                    index = torch.unravel_index(torch.tensor(flat_index), grid.shape)
                    region = (slice(None), *(slice(int(i) * c, min((int(i) + 1) * c, n))
                                             for i, c, n in zip(index, cube, spatial, strict=True)))
                    x[region] = base[region]
                scores.append(float(scorer(x.unsqueeze(0))[0]))
            result[order] = scores
    return result
