"""The naive way to explain a folder of scans, one after another: the yardstick for `mri-lrp explain`.

    python benchmarks/naive_baseline.py SCAN_DIR --checkpoint MODEL.pt --out OUT [--device cpu]

Per file, in one process and in order: nibabel read -> the package's preprocessing (`to_model`) -> LRP-αβ
(α=2, β=1) at batch 1 in float32 with module hooks in the style of Zennit (BatchNorm merged into the conv
before it, then every conv/linear backward replaced by the rule, computed from four modified-weight passes) ->
a pyplot figure of three planes with a colour bar, saved as PNG -> the relevance in the scan's grid saved with
nibabel. It is written the way a careful user would write it, not slowed down on purpose; it only lacks what
the pipeline adds: overlapping reading, device batching and background writing.

Zennit itself (its `EpsilonAlpha2Beta1`) would be the natural yardstick, but Zennit on PyPI requires
torchvision, which this project does not install (it would pin its own torch); the hooks below compute the
same αβ rule the way Zennit does, and the benchmark checks them against the package's engine.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mri_lrp.model.checkpoint import load_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.transform import to_model, to_scan
from mri_lrp.scans.scan import Scan

STAGES = ("read", "preprocess", "explain", "render", "save")


def merge_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm that directly follows a conv/linear in a Sequential folded into
    it (the usual canonizer step: αβ must see the conv and its normalisation as one affine map)."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.named_children())
        for (_, layer), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(
                    bn, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
                shape = (-1,) + (1,) * (layer.weight.dim() - 1)
                bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(bn.running_mean)
                layer.weight = nn.Parameter(layer.weight.detach() * scale.view(shape))
                layer.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())
                setattr(seq, bn_name, nn.Identity())
    return model


def _apply(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's map with another weight and no bias (the 'modified forward' of a rule)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
    return conv(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _divide(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """r / z, and 0 where z is 0 (a side with no contributions passes nothing on)."""
    return torch.where(z == 0, torch.zeros_like(r), r / torch.where(z == 0, torch.ones_like(z), z))


def alphabeta_backward(layer: nn.Module, a: torch.Tensor, r: torch.Tensor, alpha: float, beta: float
                       ) -> torch.Tensor:
    """Input relevance of one conv/linear layer under αβ: positive contributions a⁺w⁺ + a⁻w⁻ share αR, negative
    ones a⁺w⁻ + a⁻w⁺ share −βR; each share is the gradient of a modified forward, as Zennit computes it."""
    wp, wn = layer.weight.detach().clamp(min=0), layer.weight.detach().clamp(max=0)
    with torch.enable_grad():
        ap = a.detach().clamp(min=0).requires_grad_(True)
        an = a.detach().clamp(max=0).requires_grad_(True)
        z_pos = _apply(layer, ap, wp) + _apply(layer, an, wn)
        z_neg = _apply(layer, ap, wn) + _apply(layer, an, wp)
        gp_pos, gn_pos = torch.autograd.grad(z_pos, (ap, an), _divide(r, z_pos))
        gp_neg, gn_neg = torch.autograd.grad(z_neg, (ap, an), _divide(r, z_neg))
    return alpha * (ap * gp_pos + an * gn_pos) - beta * (ap * gp_neg + an * gn_neg)


def proportional_backward(a: torch.Tensor, out: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Average pooling shares relevance in proportion to each input's part of the average (the z rule)."""
    with torch.enable_grad():
        ar = a.detach().requires_grad_(True)
        z = F.adaptive_avg_pool3d(ar, out.shape[2:]) if ar.dim() == 5 else F.adaptive_avg_pool2d(ar, out.shape[2:])
        (g,) = torch.autograd.grad(z, ar, _divide(r, z))
    return ar * g


@contextmanager
def lrp_hooks(model: nn.Module, alpha: float, beta: float) -> Iterator[nn.Module]:
    """Within the block, the gradient of the merged model's output with respect to its input is the LRP-αβ
    relevance: each conv/linear (and average pool) module's backward is replaced through module hooks;
    ReLU, max pooling and flattening keep their gradients (pass, winner takes all, reshape)."""
    merged = merge_batchnorm(model)
    inputs: dict[nn.Module, torch.Tensor] = {}
    outputs: dict[nn.Module, torch.Tensor] = {}
    handles = []

    def keep(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        inputs[module], outputs[module] = args[0], out

    def replace(module: nn.Module, grad_in: tuple, grad_out: tuple) -> tuple:
        a, r = inputs[module], grad_out[0]
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            return (proportional_backward(a, outputs[module], r),)
        return (alphabeta_backward(module, a, r, alpha, beta),)

    for module in merged.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            handles.append(module.register_forward_hook(keep))
            handles.append(module.register_full_backward_hook(replace))
    try:
        yield merged
    finally:
        for handle in handles:
            handle.remove()


def explain_one(model: nn.Module, x: torch.Tensor, alpha: float = 2.0, beta: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of one sample for its predicted class, starting from that class's probability (the pipeline's
    default `--init prob`); returns (relevance, class probabilities)."""
    with lrp_hooks(model, alpha, beta) as merged:
        xr = x.detach().clone().requires_grad_(True)
        logits = merged(xr)
        probs = torch.softmax(logits.detach(), dim=1)
        target = int(probs[0].argmax())
        seed = torch.zeros_like(logits)
        seed[0, target] = probs[0, target]
        (relevance,) = torch.autograd.grad(logits, xr, seed)
    return relevance.detach(), probs[0]


def plot(path: Path, volume: np.ndarray, relevance: np.ndarray, title: str) -> None:
    """Three planes through the volume's centre (axial, coronal, sagittal) with the relevance on top and one
    colour bar, via pyplot: the figure a user would make first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = float(np.percentile(np.abs(relevance), 99.5)) or 1.0
    i, j, k = (n // 2 for n in volume.shape)
    planes = (("axial", volume[:, :, k], relevance[:, :, k]), ("coronal", volume[:, j, :], relevance[:, j, :]),
              ("sagittal", volume[i, :, :], relevance[i, :, :]))
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    for ax, (name, grey, rel) in zip(axes, planes, strict=True):
        ax.imshow(grey.T, cmap="gray", origin="lower")
        im = ax.imshow(rel.T, cmap="seismic", vmin=-vmax, vmax=vmax, alpha=0.5, origin="lower")
        ax.set_title(name)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes), fraction=0.02, label="relevance")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_naive(files: list[Path], checkpoint: Path, out: Path, device: str = "cpu", alpha: float = 2.0,
              beta: float = 1.0) -> dict[str, float]:
    """Explain ``files`` one by one; returns seconds per stage and in all ("wall", from the first read on;
    loading the model is setup, as in the pipeline's own stage times)."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.to(device).eval()
    spec: InputSpec = loaded.input_spec
    seconds = dict.fromkeys(STAGES, 0.0)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    for path in files:
        t0 = time.perf_counter()
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        scan = Scan(scan_id=path.name.split(".")[0], source=path.name, kind="nifti", data=data,
                    affine=np.asarray(img.affine, dtype=np.float64), paths=(str(path),))
        t1 = time.perf_counter()
        model_input = to_model(scan, spec, device)
        t2 = time.perf_counter()
        relevance, probs = explain_one(model, model_input.tensor.unsqueeze(0), alpha, beta)
        rel = to_scan(relevance[0], model_input)
        if relevance.device.type == "cuda":
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        k = int(probs.argmax())
        plot(out / f"{scan.scan_id}_overlay.png", data, rel,
             f"{scan.scan_id}: {loaded.class_names[k]} (p={float(probs[k]):.2f}), LRP α={alpha:g} β={beta:g}")
        t4 = time.perf_counter()
        nib.save(nib.Nifti1Image(rel, scan.affine), out / f"{scan.scan_id}_relevance.nii.gz")
        t5 = time.perf_counter()
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            seconds[stage] += dt
    seconds["wall"] = time.perf_counter() - t_start
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scans", type=Path, help="folder of .nii/.nii.gz files")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    files = sorted(p for p in args.scans.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        print(f"naive_baseline: no NIfTI files in {args.scans}", file=sys.stderr)
        return 4
    seconds = run_naive(files, args.checkpoint, args.out, args.device)
    print(json.dumps({"scans": len(files), "seconds": {k: round(v, 3) for k, v in seconds.items()},
                      "scans_per_s": round(len(files) / seconds["wall"], 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
