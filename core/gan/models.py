"""DCGAN networks (Radford et al. 2016) at 32-256 px, optionally class-conditional.

- Strided convolutions down, transposed convolutions up; no pooling, no fully connected
  hidden layers. Batch norm in both networks (except the first D layer, and nowhere in a
  ``norm="none"`` critic, which WGAN-GP needs because its penalty is per sample).
- ReLU in G with a Tanh output in [-1, 1]; LeakyReLU(0.2) in D. D returns one raw score
  per image (a logit or a critic value): the variant's loss decides what it means.
- Weights from N(0, 0.02); batch-norm scales from N(1, 0.02).
- Depth grows with the resolution: one stride-2 stage per doubling after 4 x 4, with
  channel multipliers ``width * [.., 8, 4, 2, 1]`` capped at 8. At 64 px and width 64
  the networks are exactly pytorch/examples' DCGAN.
- Conditional: G concatenates a label embedding to z; D is a projection discriminator
  (Miyato & Koyama 2018): ``score = head(h) + <embed(y), h>`` over D's final 4 x 4 features
  ``h``, so small classes share all convolutional structure with the large ones.
"""
from __future__ import annotations

import math

import torch
from torch import nn

RESOLUTIONS = (32, 64, 128, 256)   # 32 is for quick tests; the product offers 64-256
NORMS = ("batch", "none")


def channel_multipliers(resolution: int) -> list[int]:
    """Channel multipliers of the 4x4 .. resolution/2 feature maps, widest first.

    64 px: [8, 4, 2, 1]; 128 px: [8, 8, 4, 2, 1]; 256 px: [8, 8, 8, 4, 2, 1]; 32 px: [4, 2, 1]."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution={resolution}: choose one of {', '.join(map(str, RESOLUTIONS))} px.")
    stages = int(math.log2(resolution)) - 2
    return [min(2 ** (stages - 1 - i), 8) for i in range(stages)]


def init_dcgan_weights(module: nn.Module) -> None:
    """N(0, 0.02) conv weights, N(1, 0.02) batch-norm scales, zero biases (Radford et al.)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, nz) [+ labels (B,)] -> images (B, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, nz: int = 100, resolution: int = 64, channels: int = 1, width: int = 64,
                 n_classes: int = 0, embed_dim: int = 32):
        super().__init__()
        mults = channel_multipliers(resolution)
        self.nz, self.n_classes = nz, n_classes
        self.embed = nn.Embedding(n_classes, embed_dim) if n_classes else None
        cin = nz + (embed_dim if n_classes else 0)
        c0 = width * mults[0]
        # project: (nz [+ embed]) x 1 x 1 -> (width*m0) x 4 x 4
        layers: list[nn.Module] = [nn.ConvTranspose2d(cin, c0, 4, 1, 0, bias=False), nn.BatchNorm2d(c0), nn.ReLU(True)]
        for m_in, m_out in zip(mults, mults[1:]):
            # (width*m_in) x s x s -> (width*m_out) x 2s x 2s
            layers += [nn.ConvTranspose2d(width * m_in, width * m_out, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width * m_out), nn.ReLU(True)]
        # (width) x R/2 x R/2 -> channels x R x R
        layers += [nn.ConvTranspose2d(width * mults[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = z.view(z.shape[0], -1, 1, 1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels (B,) with each z.")
            z = torch.cat([z, self.embed(labels).to(z.dtype)[:, :, None, None]], 1)
        return self.main(z)


class Discriminator(nn.Module):
    """images (B, channels, R, R) [+ labels (B,)] -> scores (B,): logits or critic values, no sigmoid."""

    def __init__(self, resolution: int = 64, channels: int = 1, width: int = 64, n_classes: int = 0,
                 norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: choose one of {', '.join(NORMS)}.")
        mults = channel_multipliers(resolution)[::-1]   # narrowest first
        self.n_classes = n_classes
        bias = norm == "none"   # a bias before batch norm would be cancelled by it
        # channels x R x R -> (width) x R/2 x R/2; no norm on the first layer (Radford et al.)
        layers: list[nn.Module] = [nn.Conv2d(channels, width * mults[0], 4, 2, 1, bias=bias), nn.LeakyReLU(0.2, True)]
        for m_in, m_out in zip(mults, mults[1:]):
            # (width*m_in) x s x s -> (width*m_out) x s/2 x s/2
            layers.append(nn.Conv2d(width * m_in, width * m_out, 4, 2, 1, bias=bias))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(width * m_out))
            layers.append(nn.LeakyReLU(0.2, True))
        self.features = nn.Sequential(*layers)                       # -> (width*m_last) x 4 x 4
        c = width * mults[-1]
        self.head = nn.Conv2d(c, 1, 4, 1, 0, bias=False)             # -> 1 x 1 x 1
        self.project = nn.Embedding(n_classes, c * 16) if n_classes else None
        self.apply(init_dcgan_weights)
        if self.project is not None:
            nn.init.normal_(self.project.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        score = self.head(h).view(-1)
        if self.project is not None:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass labels (B,) with the images.")
            score = score + (self.project(labels).to(h.dtype) * h.flatten(1)).sum(1)
        return score
