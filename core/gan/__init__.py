"""GANs for scarce classes: DCGAN, WGAN (weight clipping) and WGAN-GP in one training loop.

- :mod:`core.gan.models`   DCGAN generator and discriminator/critic (64, 128, 256 px), with
                           optional class conditioning (label embedding + projection D).
- :mod:`core.gan.variants` the variants table: one loss function and one entry per variant.
- :mod:`core.gan.diffaug`  DiffAugment (translation + cutout) for datasets of tens of images.
- :mod:`core.gan.train`    ``GanConfig`` and ``train_gan``: the one loop, checkpoints, resume.
- :mod:`core.gan.sample`   checkpoint -> G -> images (core.generators and core.synthetic take it from there).
- :mod:`core.gan.commands` ``python -m core train-gan`` and ``python -m core generate``.

Training and sampling need only torch, torchvision, numpy and pillow; MLflow is reached
through callbacks from the CLI, so a bare GPU box can train. Nothing heavy is imported here.
"""
