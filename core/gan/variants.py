"""The variants table: everything that distinguishes DCGAN, WGAN and WGAN-GP.

The training loop (:mod:`core.gan.train`) reads one :class:`Variant` entry and nothing else:
its adversarial loss, how many critic steps per generator step, weight clipping or a
gradient penalty, the critic's normalisation, and the optimiser. A new variant is one loss
function and one entry in :data:`VARIANTS`.

A loss function maps D's raw scores (B,) and the side they should be judged as to a scalar:
``loss(scores, as_real)``. The discriminator minimises ``loss(D(x), True) + loss(D(G(z)), False)``
and the generator minimises ``loss(D(G(z)), True)``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # torch is imported inside the functions: the CLI reads this table without it
    import torch

OPTIMIZERS = ("adam", "rmsprop")


def bce_loss(scores: torch.Tensor, as_real: bool) -> torch.Tensor:
    """DCGAN: binary cross-entropy on D's logits (a sigmoid inside, computed stably).

    The generator side is the non-saturating -log D(G(z)) of Goodfellow et al. and Radford et al."""
    import torch.nn.functional as F

    return F.softplus(-scores).mean() if as_real else F.softplus(scores).mean()


def wasserstein_loss(scores: torch.Tensor, as_real: bool) -> torch.Tensor:
    """WGAN: the critic minimises E[D(G(z))] - E[D(x)]; the generator minimises -E[D(G(z))].

    (The sign of the generator loss is a known bug in popular implementations; a test guards it.)"""
    return -scores.mean() if as_real else scores.mean()


@dataclass(frozen=True)
class Variant:
    name: str
    loss: Callable[[torch.Tensor, bool], torch.Tensor]   # loss(scores, as_real) -> scalar
    n_critic: int                    # D/critic updates per generator update
    optimizer: str                   # "adam" | "rmsprop", for both networks
    lr: float                        # learning rate of both networks (GanConfig.lr overrides)
    betas: tuple[float, float] = (0.9, 0.999)   # Adam's betas (unused by RMSprop)
    clip: float | None = None        # clip every critic weight to [-clip, clip] after each critic step
    gp_lambda: float | None = None   # gradient-penalty weight on real/fake interpolates
    critic_norm: str = "batch"       # "batch" | "none": normalisation inside D
    sigmoid: bool = False            # D's score is a logit: report sigmoid(score) as D(x), D(G(z))
    default_batch: int = 64          # the batch size the paper used
    reference: str = ""              # where the settings come from

    def __post_init__(self):
        if self.n_critic < 1:
            raise ValueError(f"variant {self.name}: n_critic={self.n_critic} must be at least 1.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"variant {self.name}: optimizer {self.optimizer!r} is not one of {OPTIMIZERS}.")
        if self.clip is not None and self.gp_lambda is not None:
            raise ValueError(f"variant {self.name}: use weight clipping or a gradient penalty, not both.")

    @property
    def progress_metric(self) -> str:
        """The curve that shows learning: the Wasserstein estimate for critics, else D's loss."""
        return "loss_d" if self.sigmoid else "wasserstein"


VARIANTS: dict[str, Variant] = {
    "dcgan": Variant("dcgan", bce_loss, n_critic=1, optimizer="adam", lr=2e-4, betas=(0.5, 0.999),
                     critic_norm="batch", sigmoid=True,
                     reference="Radford et al. 2016: Adam 2e-4, beta1 0.5, batch 128 (64 here, as pytorch/examples)"),
    "wgan": Variant("wgan", wasserstein_loss, n_critic=5, optimizer="rmsprop", lr=5e-5, clip=0.01,
                    critic_norm="batch",
                    reference="Arjovsky et al. 2017, Algorithm 1: RMSprop 5e-5, c = 0.01, n_critic 5, batch 64"),
    "wgan-gp": Variant("wgan-gp", wasserstein_loss, n_critic=5, optimizer="adam", lr=1e-4, betas=(0.0, 0.9),
                       gp_lambda=10.0, critic_norm="none",
                       reference="Gulrajani et al. 2017, Algorithm 1: lambda 10, Adam 1e-4, betas (0, 0.9), "
                                 "n_critic 5, no batch norm in the critic"),
}


def gradient_penalty(critic: Callable[..., torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     labels: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Gulrajani et al.: E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat = eps * real + (1 - eps) * fake.

    ``eps`` (B,) ~ U[0, 1] per sample unless given. ``create_graph=True`` keeps the gradient
    differentiable, so the penalty's own gradient reaches the critic's weights."""
    import torch

    b = real.shape[0]
    if eps is None:
        eps = torch.rand(b, device=real.device)
    eps = eps.to(real.dtype).view(b, 1, 1, 1)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat) if labels is None else critic(x_hat, labels)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return ((grad.float().flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()
