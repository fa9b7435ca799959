"""Image quality of synthetic sets: per image, per set, and a memorization audit.

- :mod:`core.quality.metrics`      MSE / RMSE / NRMSE / PSNR / SSIM / MS-SSIM for batches of image pairs
- :mod:`core.quality.features`     feature extractors: the domain encoder (default) and Inception-v3
- :mod:`core.quality.setmetrics`   FID, KID, k-NN precision/recall, bootstrap intervals
- :mod:`core.quality.memorization` nearest-neighbour audit: synthetic -> training vs. training -> training
- :mod:`core.quality.evaluate`     the whole report for a real set and one or more synthetic sets
- :mod:`core.quality.commands`     ``python -m core quality``
"""
