"""Cost of LRP relative to one input-gradient pass (forward + gradient w.r.t. the input, parameters frozen).

    python benchmarks/lrp_speed.py [--device cpu|cuda] [--repeats 5] [--models cnn2d,cnn3d|all] [--threads N]
                                   [--no-memory] [--json OUT]

Times are the fastest of the repeats after a warm-up (the least disturbed by other load); the median and
the process CPU time (which other processes on a shared machine disturb less) are reported too. The
explainer is built once: tracing and BatchNorm merging are not in the per-batch time, but are reported.
Peak memory: on CUDA the peak allocated above the resident model and input; on CPU the peak resident-set
growth of a fresh child process per measurement (torch's CPU allocations are invisible to tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch
from torch import nn

from mri_lrp.lrp import Explainer


def _block(conv: type[nn.Module], bn: type[nn.Module], cin: int, cout: int) -> list[nn.Module]:
    return [conv(cin, cout, 3, padding=1, bias=False), bn(cout), nn.ReLU(inplace=True)]


def cnn(dims: int) -> nn.Module:
    """A small realistic tumour classifier: 4 conv-BN-ReLU stages with pooling, global average, linear head."""
    conv, bn, pool, gap = {
        2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
        3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d),
    }[dims]
    widths = [1, 16, 32, 64, 128] if dims == 2 else [1, 8, 16, 32, 64]
    layers: list[nn.Module] = []
    for i in range(4):
        layers += _block(conv, bn, widths[i], widths[i + 1])
        layers.append(pool(2) if i < 3 else gap(1))
    layers += [nn.Flatten(), nn.Linear(widths[-1], 4)]
    torch.manual_seed(0)
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def randomised(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and norm affine parameters, as after training (random weights)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm3d)) and m.weight is not None:
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def monai(name: str) -> nn.Module:
    """The MONAI classifiers users fine-tune for brain MRI, 3D, one input channel, 3 classes."""
    from monai.networks import nets

    make = {
        "densenet121": lambda: nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=3),
        "resnet18": lambda: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=3),
        "seresnet50": lambda: nets.SEResNet50(spatial_dims=3, in_channels=1, num_classes=3),
        "efficientnet-b0": lambda: nets.EfficientNetBN("efficientnet-b0", spatial_dims=3, in_channels=1,
                                                       num_classes=3, pretrained=False),
        "classifier": lambda: nets.Classifier(in_shape=(1, 32, 32, 32), classes=3, channels=(8, 16, 32, 64),
                                              strides=(2, 2, 2, 2)),
        "resnet18-group": lambda: nets.ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=3,
                                              n_input_channels=1, num_classes=3, norm=("group", {"num_groups": 4})),
        "vit": lambda: nets.ViT(in_channels=1, img_size=32, patch_size=8, hidden_size=192, mlp_dim=768,
                                num_layers=4, num_heads=4, classification=True, num_classes=3, post_activation=None),
    }[name]
    return randomised(make())


class _Logits(nn.Module):
    """MONAI's ViT returns (logits, hidden states): explain the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


SMALL_3D = (2, 1, 32, 32, 32)
MODELS = {"cnn2d": (lambda: cnn(2), (16, 1, 128, 128)), "cnn3d": (lambda: cnn(3), (4, 1, 64, 64, 64)),
          **{f"monai-{n}": (lambda n=n: monai(n), SMALL_3D) for n in
             ("densenet121", "resnet18", "seresnet50", "efficientnet-b0", "classifier", "resnet18-group")},
          "monai-vit": (lambda: _Logits(monai("vit")).eval(), SMALL_3D)}
METHODS = ("gradient", "alphabeta", "epsilon")


def _setup(name: str, device: str) -> tuple[nn.Module, torch.Tensor]:
    make, shape = MODELS[name]
    model = make().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    return model, torch.randn(*shape, device=device)


def _runner(method: str, model: nn.Module, x: torch.Tensor) -> tuple[Callable[[], torch.Tensor], float]:
    """The measured call and the one-off build time."""
    if method == "gradient":
        def grad() -> torch.Tensor:
            xr = x.detach().requires_grad_(True)
            out = model(xr)
            seed = torch.zeros_like(out).scatter(1, out.argmax(1, keepdim=True), 1.0)
            return torch.autograd.grad(out, xr, seed)[0]
        return grad, 0.0
    start = time.perf_counter()
    explainer = Explainer(model, rule=method, alpha=2.0, beta=1.0)
    build = time.perf_counter() - start
    return lambda: explainer(x).relevance, build


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_methods(name: str, device: str, repeats: int) -> dict[str, dict[str, float]]:
    """Fastest and median seconds per call of every method, interleaved so that load drifts hit all alike."""
    model, x = _setup(name, device)
    runners = {method: _runner(method, model, x) for method in METHODS}
    for fn, _ in runners.values():
        fn()
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    cpu: dict[str, list[float]] = {method: [] for method in METHODS}
    for _ in range(repeats):
        for method, (fn, _) in runners.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[method].append(time.perf_counter() - start)
            cpu[method].append(time.process_time() - start_cpu)
    return {m: {"seconds": min(t), "median_seconds": statistics.median(t), "cpu_seconds": min(cpu[m]),
                "build_seconds": runners[m][1]} for m, t in times.items()}


def peak_memory(name: str, method: str, device: str) -> float:
    """Peak extra memory (MiB) of one call."""
    if device.startswith("cuda"):
        model, x = _setup(name, device)
        fn, _ = _runner(method, model, x)
        fn()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    command = [sys.executable, __file__, "--child", name, method, "--threads", str(torch.get_num_threads())]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child(name: str, method: str) -> None:
    """Print the peak resident-set growth (MiB) during one call, sampled every millisecond in this process."""
    model, x = _setup(name, "cpu")
    fn, _ = _runner(method, model, x[:1])
    fn()  # load kernels without the full batch
    fn, _ = _runner(method, model, x)
    peak, running = [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    before = _rss()
    thread = threading.Thread(target=sample)
    thread.start()
    fn()
    running[0] = False
    thread.join()
    print((max(peak[0], _rss()) - before) / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="cnn2d,cnn3d", help=f"comma-separated, or 'all': {', '.join(MODELS)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (faster)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(*args.child)
        return
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available")
    cpu = f"CPU, {torch.get_num_threads()} threads"
    label = torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu
    print(f"device: {label}; torch {torch.__version__}")
    print("| model | batch | method | time (s) | median (s) | time / gradient | CPU time / gradient | "
          "peak mem (MiB) | mem / gradient | build (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in (list(MODELS) if args.models == "all" else args.models.split(",")):
        base_t = base_c = base_m = None
        timed = time_methods(name, device, args.repeats)
        for method in METHODS:
            t = timed[method]
            m = float("nan") if args.no_memory else peak_memory(name, method, device)
            if method == "gradient":
                base_t, base_c, base_m = t["seconds"], t["cpu_seconds"], m
            row = {"model": name, "shape": MODELS[name][1], "method": method, **t, "peak_mib": m,
                   "time_ratio": t["seconds"] / base_t, "cpu_ratio": t["cpu_seconds"] / base_c,
                   "memory_ratio": m / base_m if base_m else float("nan")}
            results.append(row)
            print(f"| {name} | {'x'.join(map(str, MODELS[name][1]))} | {method} | {t['seconds']:.3f} | "
                  f"{t['median_seconds']:.3f} | {row['time_ratio']:.2f} | {row['cpu_ratio']:.2f} | {m:.0f} | "
                  f"{row['memory_ratio']:.2f} | "
                  f"{t['build_seconds']:.3f} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": label, "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
