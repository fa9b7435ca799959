"""A few training steps, alone or as one rank under torchrun, then the weights to a file.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py gan dcgan 3 OUT.pt
    python tests/ddp_worker.py gan dcgan 3 OUT.pt

tests/test_distributed.py compares the two: the same global batch and seed must give the
same weights (core.distributed explains why)."""
from __future__ import annotations

import sys

import numpy as np
import torch

from core import distributed

GLOBAL_BATCH = 8


def images(n: int = 24, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 3, n)


def run_gan(variant: str, steps: int, diffaug: bool = False) -> dict:
    from core.gan.train import GanConfig, GanTrainer

    ctx = distributed.init("cpu")
    x, _ = images()
    config = GanConfig(variant=variant, resolution=32, batch=GLOBAL_BATCH, epochs=None, max_steps=steps, width=8,
                       nz=16, device="cpu", precision="fp32", diffaug=diffaug, threads=1, seed=3)
    trainer = GanTrainer(x, None, config, ctx)
    for _ in range(steps):
        trainer.train_step()
    stats = trainer.read_stats()     # a collective: every rank calls it
    return {"G": trainer.G.state_dict(), "D": trainer.D.state_dict(), "stats": stats, "world_size": ctx.world_size}


def run_classifier(model: str, epochs: int, balance: str = "none") -> dict:
    """``epochs`` epochs of 30 images in global batches of 8 (the last one, 6, splits evenly).
    Also returns the (DDP-averaged) gradients of the first step."""
    from core.classify.train import ClassifierConfig, ClassifierTrainer, epoch_indices, rank_batches

    ctx = distributed.init("cpu")
    x, y = images(n=30)
    config = ClassifierConfig(model=model, image_size=32, batch_size=GLOBAL_BATCH, epochs=epochs, lr=1e-3,
                              device="cpu", precision="fp32", threads=1, seed=5, balance=balance)
    trainer = ClassifierTrainer(config, (x, y), (x[:6], y[:6]), ["a", "b", "c"])
    first_grads = None
    for epoch in range(1, epochs + 1):
        for idx, whole in rank_batches(epoch_indices(trainer.n_train, trainer.train_y, epoch, config),
                                       config.batch_size, ctx):
            trainer.train_step(idx, whole)
            if first_grads is None:
                first_grads = {k: p.grad.detach().clone() for k, p in trainer.net.named_parameters()}
                first_loss, _, first_n = trainer.read_sums()   # a collective: every rank calls it
    loss, acc, n = trainer.read_sums()
    return {"G": trainer.net.state_dict(), "D": {}, "grads": first_grads, "world_size": ctx.world_size,
            "stats": {"first_loss": first_loss, "n": first_n + n, "train_loss": loss, "train_acc": acc}}


def main(argv: list[str]) -> None:
    what, name, steps, out = argv[0], argv[1], int(argv[2]), argv[3]
    flags = set(argv[4:])
    if what == "gan":
        result = run_gan(name, steps, diffaug="diffaug" in flags)
    elif what == "classifier":
        result = run_classifier(name, steps, "weighted_loss" if "weighted_loss" in flags else "none")
    else:
        raise SystemExit(f"unknown trainer {what!r}")
    if distributed.current().is_main:
        torch.save(result, out)
    distributed.shutdown()
    distributed.exit_now(0)


if __name__ == "__main__":
    main(sys.argv[1:])
