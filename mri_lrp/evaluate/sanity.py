"""Model-parameter randomisation test (Adebayo et al. 2018), cascading from the output layer down.

A map that barely changes when the weights it is meant to explain are replaced by random ones says more about
the input and the architecture than about what the model learnt. Each cascade step redraws the parameters of
one more layer (top first) and compares the rule's map with the trained model's map.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: A rule whose maps keep at least this rank correlation with the original after the whole cascade is flagged.
SURVIVES_THRESHOLD = 0.5


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, in registration order (input side first)."""
    return [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def cascade_points(layers: list[str], steps: int) -> list[int]:
    """How many top layers are randomised at each step: evenly spread, the last step randomising all."""
    n = len(layers)
    steps = max(1, min(steps, n))
    return sorted({max(1, round(n * (i + 1) / steps)) for i in range(steps)})


def randomised_copies(model: nn.Module, points: list[int], seed: int) -> Iterator[tuple[int, str, nn.Module]]:
    """(layers randomised, deepest layer randomised, model) for each cascade point, on the model's device.

    Every parameter is redrawn from a normal distribution with its trained mean and spread (a constant stays
    constant), so activations keep their scale and only what was learnt is lost.
    """
    layers = parameter_layers(model)
    top_first = list(reversed(layers))
    generator = torch.Generator().manual_seed(seed)
    current = copy.deepcopy(model)
    done = 0
    for count in points:
        modules = dict(current.named_modules())
        with torch.no_grad():
            for name in top_first[done:count]:
                for p in modules[name].parameters(recurse=False):
                    noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
                    mean, std = p.double().mean(), p.double().std() if p.numel() > 1 else torch.tensor(0.0)
                    p.copy_((mean + std * noise).to(p.dtype))
        done = count
        yield count, top_first[count - 1], copy.deepcopy(current)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (average ranks for ties)."""
    ra, rb = _ranks(a.flatten().double()), _ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 1.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype)
    # Ties share the mean of their ranks.
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() + 1) / 2
    ranks[order] = mean_rank[inverse]
    return ranks


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float:
    """Mean structural similarity of two maps, each scaled by its largest |value| (so 1 = same up to scale),
    over a uniform window of ``window`` voxels per axis (Wang et al. 2004 constants for a [-1, 1] range)."""
    def unit(t: torch.Tensor) -> torch.Tensor:
        peak = t.abs().max()
        return (t / peak if peak > 0 else t).double()

    x, y = unit(a), unit(b)
    spatial = x.dim()
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
    w = [min(window, n) for n in x.shape]

    def mean(t: torch.Tensor) -> torch.Tensor:
        return pool(t[None, None], kernel_size=w, stride=1)[0, 0]

    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx ** 2, mean(y * y) - my ** 2, mean(x * y) - mx * my
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())
