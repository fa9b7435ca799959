"""Diffusion models for scarce classes: a class-conditional DDPM with DDIM sampling and classifier-free guidance.

Built on MONAI's generative networks and schedulers (``monai.networks.nets.DiffusionModelUNet``,
``monai.networks.schedulers.DDPMScheduler`` / ``DDIMScheduler``), not a hand-written UNet.

- :mod:`core.diffusion.models`   the UNet per resolution (32, 64, 128, 256 px) and the noise schedules.
- :mod:`core.diffusion.train`    ``DiffusionConfig`` and ``train_diffusion``: EMA weights, condition
                                 dropout, and the one generator loop of :mod:`core.trainloop`.
- :mod:`core.diffusion.sample`   DDIM sampling with a guidance scale, from a trainer or a checkpoint.
- :mod:`core.diffusion.commands` ``python -m core train-diffusion``.

Like :mod:`core.gan`, it needs only torch, numpy, pillow and monai; MLflow is reached through
callbacks from the CLI. Nothing heavy is imported here (``import monai`` takes seconds).
"""
