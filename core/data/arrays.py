"""A dataset folder's split as in-memory arrays: the one loader every trainer and metric uses.

``split_arrays(ds, size, "train")`` reads the pixel cache at ``size`` (building it on first use)
and returns the rows of that split as uint8 images (N, size, size), their class names, image
ids and manifest rows. By default only real rows (:func:`core.data.manifest.real_rows`: "real
means real", synthetic or augmented images never count as real data) and only rows the cache
could read; ``classes`` and ``mask`` narrow it further. ``split=None`` takes every split (a
synthetic set's folder), ``real_only=False`` every source.

The GAN trainer (its training images), the classifier (its splits), the study (its real splits
and the synthetic sets it generates), and quality (the real reference, synthetic folders, the
domain encoder's training data) all read their arrays here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Progress = Callable[[int, int, str], None]


@dataclass
class SplitArrays:
    images: np.ndarray      # uint8 (N, size, size)
    labels: np.ndarray      # class names (N,), str
    ids: list[str]          # image ids (N)
    rows: np.ndarray        # the manifest rows they came from (N,)
    unreadable: int         # rows that matched but the pixel cache could not read (left out)

    def __len__(self) -> int:
        return len(self.rows)

    def class_indices(self, class_names: Sequence[str]) -> np.ndarray:
        """The labels as int64 indices into ``class_names`` (every label must be one of them)."""
        index = {c: i for i, c in enumerate(class_names)}
        return np.array([index[c] for c in self.labels], dtype=np.int64)


def split_arrays(ds, size: int, split: str | None = "train", *, classes: Iterable[str] | None = None,
                 real_only: bool = True, mask: np.ndarray | None = None, on_progress: Progress | None = None,
                 cache=None) -> SplitArrays:
    """The rows of ``split`` (None: every split) of ``ds`` at ``size`` px; see the module docstring.
    ``mask``: a boolean array over the manifest rows that must also hold; ``cache``: an open
    :class:`core.data.cache.PixelCache` at ``size`` (to read several splits with one open)."""
    from core.data.cache import pixel_cache
    from core.data.manifest import real_rows

    df = ds.manifest
    wanted = np.ones(len(df), bool)
    if split is not None:
        wanted &= (df["split"] == split).to_numpy()
    if real_only:
        wanted &= real_rows(df)
    if classes is not None:
        wanted &= df["label"].isin(list(classes)).to_numpy()
    if mask is not None:
        wanted &= np.asarray(mask, bool)
    cache = cache if cache is not None else pixel_cache(ds, size, on_progress=on_progress)
    if cache.size != size:
        raise ValueError(f"split_arrays: the pixel cache given is at {cache.size} px, not {size}.")
    rows = np.flatnonzero(wanted & cache.ok)
    return SplitArrays(np.ascontiguousarray(cache.array[rows]), df["label"].to_numpy()[rows].astype(str),
                       df["image_id"].to_numpy()[rows].astype(str).tolist(), rows,
                       int((wanted & ~cache.ok).sum()))


def splits_arrays(ds, size: int, splits: Sequence[str] = ("train", "val", "test"), *,
                  on_progress: Progress | None = None, **options) -> dict[str, SplitArrays]:
    """:func:`split_arrays` of each of ``splits``, from one open of the pixel cache."""
    from core.data.cache import pixel_cache

    cache = pixel_cache(ds, size, on_progress=on_progress)
    return {name: split_arrays(ds, size, name, cache=cache, **options) for name in splits}
