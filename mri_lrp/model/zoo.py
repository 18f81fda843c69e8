"""A small model zoo: compact classifiers for 2D slices and 3D volumes, built from plain ``torch.nn``.

The networks are deliberately simple and fx-traceable (no Python control flow on tensor values in
``forward``), so the LRP engine can rewrite them. ``resnet3d`` adds what real networks have and plain CNNs
lack: BatchNorm, a residual sum written as ``out += identity`` and one ReLU module called twice per block.

Each architecture's keyword arguments are plain JSON values, so a checkpoint can store them and rebuild
the network exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mri_lrp.errors import SettingsError

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_GLOBAL_POOL = {"avg": _AVGPOOL, "max": {2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}}


def _check_positive(**values: int) -> None:
    """Reject sizes that would build an empty or broken network, naming the bad argument."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"model argument {name} must be a positive integer, not {value!r}")


class PlainCNN(nn.Module):
    """Conv-BN-ReLU-MaxPool blocks, global average (or max) pooling and one linear layer.

    Each block halves the grid and the first block has ``width`` channels, doubling per block, so an input
    needs at least ``2 ** depth`` voxels along every spatial axis. Global max pooling (``pool="max"``) takes
    each feature where it is strongest, so a finding the size of a lesion decides the class on its own.
    """

    def __init__(self, dims: int, in_channels: int = 1, num_classes: int = 4, width: int = 8,
                 depth: int = 4, dropout: float = 0.0, pool: str = "avg") -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, width=width, depth=depth)
        if not 0.0 <= dropout < 1.0:
            raise SettingsError(f"model argument dropout must be in [0, 1), not {dropout!r}")
        if pool not in _GLOBAL_POOL:
            raise SettingsError(f"model argument pool must be one of {sorted(_GLOBAL_POOL)}, not {pool!r}")
        blocks: list[nn.Module] = []
        channels = in_channels
        for level in range(depth):
            out = width * 2 ** level
            blocks += [
                _CONV[dims](channels, out, kernel_size=3, padding=1, bias=False),
                _NORM[dims](out),
                nn.ReLU(),
                _MAXPOOL[dims](kernel_size=2),
            ]
            channels = out
        self.features = nn.Sequential(*blocks)
        self.pool = _GLOBAL_POOL[pool][dims](1)
        self.flatten = nn.Flatten()
        # Dropout is the identity in eval mode, so it changes training only, never the explanation.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(self.dropout(self.flatten(x)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual sum; a 1x1 projection when the shape changes."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _CONV[dims](in_channels, out_channels, kernel_size=3, stride=stride, padding=1,
                                 bias=False)
        self.bn1 = _NORM[dims](out_channels)
        self.conv2 = _CONV[dims](out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = _NORM[dims](out_channels)
        # One ReLU module, called after bn1 and again after the sum: the engine must handle module reuse.
        self.relu = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                _CONV[dims](in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                _NORM[dims](out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A small ResNet: a stem (conv, BN, ReLU, max pool), ``depth`` stages of ``blocks`` residual blocks
    (the first stage keeps the grid, each later one halves it and doubles the channels), global average
    pooling and one linear layer. An input needs at least ``2 ** depth`` voxels along every axis."""

    def __init__(self, dims: int, in_channels: int = 1, num_classes: int = 4, width: int = 8,
                 depth: int = 3, blocks: int = 1) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, width=width, depth=depth,
                        blocks=blocks)
        self.stem = nn.Sequential(
            _CONV[dims](in_channels, width, kernel_size=3, padding=1, bias=False),
            _NORM[dims](width),
            nn.ReLU(),
            _MAXPOOL[dims](kernel_size=2),
        )
        stages: list[nn.Module] = []
        channels = width
        for level in range(depth):
            out = width * 2 ** level
            stage = [BasicBlock(dims, channels if i == 0 else out, out, 2 if (level > 0 and i == 0) else 1)
                     for i in range(blocks)]
            stages.append(nn.Sequential(*stage))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.pool = _AVGPOOL[dims](1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.classifier(self.flatten(x))


def cnn3d(in_channels: int = 1, num_classes: int = 4, width: int = 8, depth: int = 4,
          dropout: float = 0.0, pool: str = "avg") -> PlainCNN:
    """Compact 3D CNN for whole volumes (input N, C, X, Y, Z)."""
    return PlainCNN(3, in_channels, num_classes, width, depth, dropout, pool)


def cnn2d(in_channels: int = 1, num_classes: int = 4, width: int = 8, depth: int = 4,
          dropout: float = 0.0, pool: str = "avg") -> PlainCNN:
    """The 2D analogue of ``cnn3d`` for slice models (input N, C, X, Y)."""
    return PlainCNN(2, in_channels, num_classes, width, depth, dropout, pool)


def resnet3d(in_channels: int = 1, num_classes: int = 4, width: int = 8, depth: int = 3,
             blocks: int = 1) -> ResNet:
    """Small 3D ResNet with BatchNorm and residual sums."""
    return ResNet(3, in_channels, num_classes, width, depth, blocks)


ZOO: dict[str, Callable[..., nn.Module]] = {"cnn3d": cnn3d, "cnn2d": cnn2d, "resnet3d": resnet3d}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a zoo network by name; an unknown name or argument is a ``SettingsError`` naming it."""
    try:
        builder = ZOO[name]
    except KeyError:
        raise SettingsError(f"unknown model {name!r}; the zoo has {', '.join(sorted(ZOO))}") from None
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise SettingsError(f"model {name!r}: bad arguments {sorted(kwargs)}: {exc}") from None
