"""A dataset folder's train/val/test splits as in-memory arrays for the classifier (single-label).

``classifier_splits(ds, size)`` reads the manifest's splits and the pixel cache at ``size``:

- single-label mode: images with at most one distinct label (one lesion type, or a normal);
  images with several lesion types are left out and counted in the notes;
- images the cache could not read are left out (counted);
- only real rows (:func:`core.data.manifest.real_rows`): synthetic images (source ``gan:...`` /
  ``classic:...`` / ``diffusion:...``) never enter train, val or test here (a row of that kind in val or
  test is an error, since the test split must stay untouched; in train it is left out and counted:
  augmentation sets are compared by the study, which adds them to the real training array itself);
- ``classes`` picks a subset (others are dropped); by default every class with an image.

pandas is imported inside the function (core.classify itself needs only torch and numpy).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

@dataclass
class ClassifierSplits:
    train: tuple[np.ndarray, np.ndarray]   # uint8 (N, S, S), int64 (N,)
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: list[str]
    size: int
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: images}}."""
        out = {}
        for name in ("train", "val", "test"):
            y = getattr(self, name)[1]
            n = np.bincount(y, minlength=len(self.class_names))
            out[name] = {c: int(n[i]) for i, c in enumerate(self.class_names)}
        return out


def classifier_splits(ds, size: int, classes: list[str] | None = None,
                      on_progress: Callable[[int, int, str], None] | None = None) -> ClassifierSplits:
    df = ds.manifest
    notes: list[str] = []
    if classes:
        unknown = [c for c in classes if c not in ds.classes]
        if unknown:
            raise ValueError(f"classes: {unknown} are not classes of {ds.root}; its classes are "
                             f"{', '.join(ds.classes)}.")
        if len(set(classes)) < 2:
            raise ValueError(f"classes: choose at least 2 distinct classes, got {classes}.")
    distinct = np.array([len(set(labels or [label])) for label, labels in zip(df["label"], df["labels"])])
    single = distinct <= 1
    if (~single).any():
        notes.append(f"single-label mode: left out {int((~single).sum())} image(s) with several lesion types.")
    from core.data.manifest import real_rows

    synthetic = ~real_rows(df)
    held_out = (df["split"] != "train").to_numpy() & synthetic
    if held_out.any():
        raise ValueError(f"{ds.root}: {int(held_out.sum())} synthetic/augmented image(s) are in the val or test split "
                         f"(e.g. {df['image_id'][held_out].iloc[0]}); augmented images may only be in train. "
                         f"Rebuild the set so that val and test hold real images only.")
    if synthetic.any():
        notes.append(f"left out {int(synthetic.sum())} synthetic/augmented training image(s): the classifier trains "
                     f"on real images (compare augmentation sets with the study).")
    from core.data.arrays import splits_arrays

    arrays = splits_arrays(ds, size, classes=classes or None, mask=single, on_progress=on_progress)
    unreadable = sum(a.unreadable for a in arrays.values())
    if unreadable:
        notes.append(f"left out {unreadable} unreadable image(s) (see the dataset's load report).")
    present = set().union(*(set(a.labels) for a in arrays.values()))
    names = [c for c in (classes or ds.classes) if c in present]
    if len(names) < 2:
        raise ValueError(f"{ds.root}: only {len(names)} class(es) with readable single-label images ({names}); "
                         f"a classifier needs at least 2.")
    out = {}
    for split, a in arrays.items():
        out[split] = (a.images, a.class_indices(names))
        counts = np.bincount(out[split][1], minlength=len(names))
        absent = [c for c, n in zip(names, counts) if n == 0]
        if absent and split != "val":
            notes.append(f"{split} split has no images of {', '.join(absent)}.")
    for split in ("train", "val", "test"):
        if len(out[split][1]) == 0:
            raise ValueError(f"{ds.root}: the {split} split is empty after filtering; the classifier needs train, "
                             f"val and test images (see `python -m core dataset --data {ds.root}`).")
    return ClassifierSplits(out["train"], out["val"], out["test"], names, size, notes)
