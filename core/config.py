"""The one way a config dataclass becomes JSON and comes back.

Every job's settings are a frozen dataclass that validates itself in ``__post_init__``
(:class:`core.gan.train.GanConfig`, :class:`core.classify.train.ClassifierConfig`,
:class:`core.study.grid.StudyConfig`). :class:`DictConfig` gives them ``to_dict`` (plain JSON
types: tuples become lists) for job files, MLflow params and checkpoints, and ``from_dict``,
which refuses unknown fields by name, so a typo in ``--config`` is an error, not a default.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping


class DictConfig:
    """Mixin for config dataclasses. ``WHAT`` names the config in messages ("GAN config")."""
    WHAT = "config"

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: Mapping):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown {cls.WHAT} field(s) {unknown}; known fields: {', '.join(sorted(known))}.")
        return cls(**fields)
