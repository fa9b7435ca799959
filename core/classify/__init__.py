"""Classifiers for the augmentation study: does augmentation help, for which class, by how much.

- :mod:`core.classify.models`   small CNN, ResNet-18, VGG16, GoogLeNet, Inception-v3 (grey first
                                conv, optional local pretrained weights) and ``features()``.
- :mod:`core.classify.train`    ``ClassifierConfig`` and ``train_classifier``: in-memory uint8
                                data, early stopping on validation macro-F1, checkpoints, resume.
- :mod:`core.classify.evaluate` test metrics: accuracy, balanced accuracy, macro-F1, per-class
                                sensitivity / specificity / AUROC, confusion matrix, bootstrap CIs.
- :mod:`core.classify.commands` ``python -m core train-classifier``.

Training needs only torch, torchvision and numpy; MLflow is reached through callbacks from the
CLI. Nothing heavy is imported here.
"""
