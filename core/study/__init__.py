"""The augmentation study: does augmentation help, for which class, by how much.

- :mod:`core.study.grid`     the augmentation sets, ``StudyConfig``, the presets and the cells
                             (augmentation set x network x seed).
- :mod:`core.study.sets`     each cell's training set, built from the TRAIN split only: classic
                             operations through :mod:`core.augment`, GAN images through
                             :mod:`core.gan` + the balancing planner (GANs trained once per study
                             and variant, cached, or taken from given checkpoints).
- :mod:`core.study.run`      the parent MLflow study run, one child run per cell, resume, job
                             specs for fan-out (``run-cell``), the test-split hash check.
- :mod:`core.study.store`    the cells as MLflow child runs and their test predictions: reading them
                             back (``collect_cells``), the test-split hash check.
- :mod:`core.study.results`  pure tables over the cells: mean ± 95% CI, paired Δ against real only
                             with CI, p, Holm and a verdict (generator fidelity on GAN rows),
                             per-class paired Δ sensitivity, CSV export.
- :mod:`core.study.stats`    the paired bootstrap, sign-flip test, Holm and verdict behind the table.
- :mod:`core.study.verdict`  the study's answer in plain words, from the table.
- :mod:`core.study.ray_executor`  ``study --executor ray``: generators and cells as Ray tasks
                             (retries, one child run per cell); ray is imported only there.
- :mod:`core.study.commands` ``python -m core study``, ``run-cell`` and ``study-results``.

Nothing heavy is imported here.
"""
