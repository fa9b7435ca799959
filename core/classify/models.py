"""Classifier networks: a small CNN for CPUs, and torchvision's ResNet-18, VGG16, GoogLeNet and
Inception-v3 (``weights=None``; local pretrained weights are optional).

Grayscale: the FIRST CONVOLUTION IS ADAPTED to ``in_channels`` (1 for radiographs) instead of
replicating the image to 3 channels: the same maths for a fresh network, and a third of the
first layer's work. Pretrained RGB kernels are summed over their 3 input channels when loaded,
which is exactly what the RGB network computes on a grey image replicated to R = G = B.

Auxiliary heads: Inception-v3 always trains with its auxiliary logits (loss + 0.4 * aux, as
in Szegedy et al. 2016); GoogLeNet's two auxiliary heads are optional (``aux_logits``; loss +
0.3 * (aux1 + aux2), Szegedy et al. 2015). In eval mode every model returns plain logits.

Every model carries ``model.arch`` (its :data:`MODELS` key), so :func:`features` and the
trainer know what they hold; state-dict keys stay torchvision's, so torchvision weight files
load as they are.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[int, int, bool], nn.Module]   # (num_classes, in_channels, aux_logits) -> module
    min_size: int          # smallest input side (px) it trains at (batch norm needs >1 value per channel)
    default_size: int      # the size it is meant for
    fixed_size: int | None # inputs are always resized to this (Inception-v3: 299)
    first_conv: str        # dotted path of the first convolution (adapted to in_channels)
    head: str              # dotted path of the final linear layer (its input is the embedding)
    aux_weight: float      # weight of each auxiliary loss in training (0: no auxiliary heads)
    aux_default: bool      # aux_logits when the caller does not say
    note: str              # one line for pages and --help


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-conv-BN-ReLU-maxpool stages (32, 64, 128, 256 channels), global average
    pooling, dropout and one linear layer: ~1.2 M parameters, trains in seconds per epoch on a CPU.

    (B, C, S, S) -> stages -> (B, 256, S/16, S/16) -> pool -> (B, 256) embedding -> (B, classes)."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for mult in (1, 2, 4, 8):
            c = width * mult
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(h))


class DomainCNN(nn.Module):
    """Four stride-2 conv-BN-ReLU blocks (16, 32, 64, 128 channels) -> global average pool (the 128-d
    embedding) -> one linear layer: ~0.1 M parameters. The quality metrics' domain encoder
    (:func:`core.quality.features.domain_encoder`): small enough to train in seconds on a CPU."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16):
        super().__init__()
        chans = [in_channels, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for c_in, c in zip(chans, chans[1:]):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


def _domain_cnn(num_classes: int, in_channels: int, aux: bool) -> nn.Module:
    return DomainCNN(num_classes, in_channels)


def _small_cnn(num_classes: int, in_channels: int, aux: bool) -> nn.Module:
    return SmallCNN(num_classes, in_channels)


def _resnet18(num_classes: int, in_channels: int, aux: bool) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


def _vgg16(num_classes: int, in_channels: int, aux: bool) -> nn.Module:
    from torchvision.models import vgg16

    return vgg16(weights=None, num_classes=num_classes)


def _googlenet(num_classes: int, in_channels: int, aux: bool) -> nn.Module:
    from torchvision.models import googlenet

    # transform_input re-normalises ImageNet RGB; our inputs are normalised grey
    return googlenet(weights=None, num_classes=num_classes, aux_logits=aux, transform_input=False,
                     init_weights=True)


def _inception_v3(num_classes: int, in_channels: int, aux: bool) -> nn.Module:
    from torchvision.models import inception_v3

    return inception_v3(weights=None, num_classes=num_classes, aux_logits=aux, transform_input=False,
                        init_weights=True)


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("small_cnn", _small_cnn, 16, 64, None, "features.0", "head", 0.0, False,
              "4-stage CNN, 1.2 M parameters: the CPU default"),
    ModelSpec("domain_cnn", _domain_cnn, 16, 64, None, "body.0", "head", 0.0, False,
              "4 stride-2 conv blocks, 0.1 M parameters: the quality metrics' domain encoder"),
    ModelSpec("resnet18", _resnet18, 32, 128, None, "conv1", "fc", 0.0, False,
              "ResNet-18 (He et al. 2016), 11 M parameters"),
    ModelSpec("vgg16", _vgg16, 32, 224, None, "features.0", "classifier.6", 0.0, False,
              "VGG16 (Simonyan & Zisserman 2015), 134 M parameters: for a GPU"),
    ModelSpec("googlenet", _googlenet, 32, 224, None, "conv1.conv", "fc", 0.3, False,
              "GoogLeNet / Inception-v1 (Szegedy et al. 2015); optional auxiliary heads"),
    ModelSpec("inception_v3", _inception_v3, 299, 299, 299, "Conv2d_1a_3x3.conv", "fc", 0.4, True,
              "Inception-v3 (Szegedy et al. 2016) at 299 px with auxiliary logits: for a GPU"),
)}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"model={name!r}: unknown network; choose one of {', '.join(MODELS)}.")
    return MODELS[name]


def input_size(name: str, requested: int) -> int:
    """The side (px) the images are fed at: ``requested``, except for fixed-size networks
    (Inception-v3: 299). Raises if ``requested`` is below the network's minimum."""
    spec = model_spec(name)
    if spec.fixed_size:
        return spec.fixed_size
    if requested < spec.min_size:
        raise ValueError(f"image_size={requested}: {name} needs at least {spec.min_size} px; "
                         f"choose {spec.min_size} or more (it is meant for {spec.default_size} px).")
    return int(requested)


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part) if not part.isdigit() else module[int(part)]
    return module


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, last = path.rpartition(".")
    parent = _get(module, parent_path) if parent_path else module
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


def _adapt_first_conv(model: nn.Module, path: str, in_channels: int) -> None:
    conv = _get(model, path)
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():   # keep the family's init: sum the fresh kernels over the input channels
        w = conv.weight.sum(dim=1, keepdim=True)
        new.weight.copy_(w.expand(-1, in_channels, -1, -1) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set(model, path, new)


def build_model(name: str, num_classes: int, in_channels: int = 1, weights_path: str | Path | None = None,
                aux_logits: bool | None = None) -> nn.Module:
    """A fresh ``name`` network for ``num_classes`` classes on ``in_channels``-channel images.

    ``weights_path``: a local state dict (``torch.save(model.state_dict(), path)``, or a dict
    holding one under ``"state_dict"``/``"model"``), read with ``weights_only=True``. RGB first
    convolutions are summed to grey; head weights of another class count are skipped (the head
    stays freshly initialised). What happened is in ``model.load_report``.
    ``aux_logits``: GoogLeNet's auxiliary heads (default off); Inception-v3 always has them."""
    spec = model_spec(name)
    if not isinstance(num_classes, int) or not 2 <= num_classes <= 10_000:
        raise ValueError(f"num_classes={num_classes!r}: a classifier needs between 2 and 10000 classes.")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels={in_channels!r}: use 1 (grey) or 3 (RGB).")
    aux = spec.aux_default if aux_logits is None or name == "inception_v3" else bool(aux_logits)
    model = spec.build(num_classes, in_channels, aux)
    _adapt_first_conv(model, spec.first_conv, in_channels)
    model.arch = name
    model.aux_weight = spec.aux_weight if aux else 0.0
    model.load_report = None
    if weights_path is not None:
        model.load_report = load_weights(model, weights_path)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"weights_path={str(path)!r}: no such file; give the path of a saved state dict "
                         f"(torch.save(model.state_dict(), path)) or leave it empty for random weights.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # pickle, zip and EOF errors all mean: not a usable weights file
        raise ValueError(f"weights_path={str(path)!r}: cannot be read as a state dict ({type(e).__name__}: "
                         f"{str(e)[:200]}); save one with torch.save(model.state_dict(), path).") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights_path={str(path)!r}: expected a dict of tensors (a state dict), "
                         f"got {type(state).__name__}.")
    return {k.removeprefix("module."): v for k, v in state.items()}   # DDP-saved files


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a local state dict into ``model`` (see :func:`build_model`); returns a report:
    ``{"path", "loaded": n, "adapted": [first-conv keys summed/replicated], "skipped_head": [keys],
    "skipped_aux": [keys], "missing_aux": [keys]}``. Any other mismatch is a ValueError."""
    path = Path(path).expanduser()
    spec = model_spec(model.arch)
    source = _read_state_dict(path)
    target = model.state_dict()
    conv_key = spec.first_conv + ".weight"
    aux_prefixes = ("aux1.", "aux2.", "AuxLogits.")
    report = {"path": str(path), "loaded": 0, "adapted": [], "skipped_head": [], "skipped_aux": [], "missing_aux": []}
    use: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for key, value in source.items():
        if key not in target:
            if key.startswith(aux_prefixes):
                report["skipped_aux"].append(key)
                continue
            wrong.append(f"{key} (not in {model.arch})")
            continue
        want = target[key]
        if key == conv_key and value.shape != want.shape and value.shape[2:] == want.shape[2:] \
                and value.shape[0] == want.shape[0]:
            if want.shape[1] == 1:          # RGB kernels -> grey: R = G = B, so the response is the sum
                value = value.sum(dim=1, keepdim=True)
            else:                           # grey kernels -> RGB: split evenly over the channels
                value = value.expand(-1, want.shape[1], -1, -1) / want.shape[1]
            report["adapted"].append(key)
        if value.shape != want.shape:
            head = key.startswith(spec.head + ".") or (key.startswith(aux_prefixes) and key.endswith(
                ("fc.weight", "fc.bias", "fc2.weight", "fc2.bias")))
            if head:                         # another class count: keep this head freshly initialised
                report["skipped_head"].append(key)
                continue
            wrong.append(f"{key} (file {tuple(value.shape)}, {model.arch} {tuple(want.shape)})")
            continue
        use[key] = value.to(want.dtype)
    missing = [k for k in target if k not in use and k not in report["skipped_head"]]
    report["missing_aux"] = [k for k in missing if k.startswith(aux_prefixes)]
    missing = [k for k in missing if not k.startswith(aux_prefixes) and not k.endswith("num_batches_tracked")]
    if wrong or missing:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensor(s) do not fit: {', '.join(wrong[:4])}")
        if missing:
            parts.append(f"{len(missing)} weight(s) of {model.arch} are not in the file: {', '.join(missing[:4])}")
        raise ValueError(f"weights_path={str(path)!r}: not {model.arch} weights ({'; '.join(parts)}); "
                         f"give a state dict saved from a torchvision {model.arch}.")
    model.load_state_dict(use, strict=False)
    report["loaded"] = len(use)
    return report


def head_module(model: nn.Module) -> nn.Module:
    """The final linear layer (its input is the penultimate-layer embedding)."""
    return _get(model, model_spec(model.arch).head)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer embeddings (B, D) for ``x`` (B, C, S, S): the input of the final linear
    layer (small CNN 256, ResNet-18 512, VGG16 4096, GoogLeNet 1024, Inception-v3 2048).

    Runs the model as it is (call ``model.eval()`` first for deterministic embeddings); the
    auxiliary heads are ignored. Used by core.quality as a domain encoder."""
    model = getattr(model, "module", model)   # a DDP-wrapped model
    if not hasattr(model, "arch"):
        raise ValueError("features(): the model was not made by core.classify.models.build_model "
                         "(it has no .arch); build it with build_model(name, ...).")
    captured: list[torch.Tensor] = []
    hook = head_module(model).register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return captured[-1].flatten(1)


def model_names() -> list[str]:
    return list(MODELS)
