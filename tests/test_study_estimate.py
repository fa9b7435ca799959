"""core.study.estimate: the schedule replay against hand-worked schedules and Graham's bounds, the
per-cell image counts against the study's own training sets, and the paper preset's task list."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from core.study.estimate import (Rates, Sizes, Task, cell_seconds, planned_synthetic, projection, set_train_images,
                                 study_tasks, wall_seconds)
from core.study.grid import AUG_SETS, CLASSIC_OPS, Cell, cells, preset


def test_a_hand_worked_schedule():
    # submitted in this order: the generator, a cell waiting for it, then two cells that need nothing
    tasks = [Task("generator g", 10), Task("cell a", 5, "generator g"), Task("cell b", 5), Task("cell c", 3)]
    assert wall_seconds(tasks, 1) == 23            # one worker: the sum, whatever the order
    # 2 workers: g and b at 0; c at 5 (b ends); a waits for g (10) -> ends at 15
    assert wall_seconds(tasks, 2) == 15
    assert wall_seconds(tasks, 3) == 15            # g, b and c at once; a after g
    assert wall_seconds([Task("cell x", 4)] * 1, 8) == 4


def test_a_cell_never_starts_before_its_generator():
    tasks = [Task("generator g", 100), *[Task(f"cell {i}", 1, "generator g") for i in range(5)]]
    assert wall_seconds(tasks, 8) == 101           # every cell waits, then all run at once
    assert wall_seconds(tasks, 2) == 100 + 3       # 5 one-second cells on 2 workers after g


@pytest.mark.parametrize("seed", range(40))
def test_graham_bounds_on_random_plans(seed):
    """List scheduling with precedence: max(W/k, L) <= T_k <= W/k + (1 - 1/k) L (Graham, 1969),
    with W the total work and L the longest chain; T_1 = W."""
    rng = random.Random(seed)
    gens = [Task(f"generator {g}", rng.uniform(1, 50)) for g in range(rng.randint(0, 4))]
    tasks = list(gens)
    for i in range(rng.randint(1, 40)):
        after = rng.choice([None, *[g.name for g in gens]])
        tasks.append(Task(f"cell {i}", rng.uniform(0.5, 30), after))
    by = {t.name: t for t in tasks}
    work = sum(t.seconds for t in tasks)
    chain = max(t.seconds + (by[t.after].seconds if t.after else 0) for t in tasks)
    assert wall_seconds(tasks, 1) == pytest.approx(work)
    for k in (2, 3, 8, 64):
        t = wall_seconds(tasks, k)
        assert t >= max(work / k, chain) - 1e-9
        assert t <= work / k + (1 - 1 / k) * chain + 1e-9


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="workers=0"):
        wall_seconds([Task("cell a", 1)], 0)
    with pytest.raises(ValueError, match="generator nope"):
        wall_seconds([Task("cell a", 1, "generator nope")], 2)


def test_training_images_per_set_match_the_studys_own_training_sets():
    from core.study.sets import training_set

    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    y = np.repeat([0, 1, 2], [30, 9, 2])
    x = rng.integers(0, 256, (len(y), 16, 16), dtype=np.uint8)

    class Splits:
        train_x, train_y, class_names = x, y, names

    config = dataclasses.replace(preset("standard"), image_size=16)
    sizes = Sizes({"a": 30, "b": 9, "c": 2}, 5, 7)

    def gan_source(variant, mode="plan"):   # as many images as the planner asks for (core.study.sets.gan_images)
        from core.balance import class_balance_plan

        plan = class_balance_plan(dict(sizes.train_counts), config.gan_target, None, config.gan_cap)
        per_class = plan["real"] if mode == "tstr" else plan["synthetic"]
        gy = np.repeat(np.arange(3), per_class.to_numpy())
        return np.zeros((len(gy), 16, 16), np.uint8), gy

    for key in ("real", *CLASSIC_OPS, "classic", "dcgan", "tstr-dcgan"):
        tx, ty, _ = training_set(key, Splits, config, 0, gan_source)
        assert set_train_images(config, key, sizes) == len(ty), key


def test_the_planners_top_up_by_hand():
    config = dataclasses.replace(preset("quick"), gan_target="max", gan_cap=2.0)
    # b: 6 to reach 10 (cap 8) -> 6; c: 9 to reach 10, capped at 2 x 1 = 2
    assert planned_synthetic(config, {"a": 10, "b": 4, "c": 1}) == 8
    sizes = Sizes({"a": 10, "b": 4, "c": 1}, 3, 4)
    assert set_train_images(config, "dcgan", sizes) == 15 + 8
    combo = dataclasses.replace(config, sets=("real", "classic+gan"))
    assert set_train_images(combo, "classic+gan", sizes) == 15 + 15 + 8


def test_cell_seconds_by_hand():
    config = dataclasses.replace(preset("paper"), epochs=3)   # equal_budget off: every set trains 3 epochs
    rates = Rates("cpu", {"vgg16": 10.0}, {"vgg16": 20.0}, task_overhead_s=2.0)
    sizes = Sizes({"a": 60, "b": 40}, 20, 40)
    assert cell_seconds(config, Cell("real", "vgg16", 0), sizes, rates) == pytest.approx(2 + 3 * (100 / 10 + 20 / 20)
                                                                                         + 40 / 20)
    assert cell_seconds(config, Cell("hflip", "vgg16", 0), sizes, rates) == pytest.approx(2 + 3 * (200 / 10 + 1) + 2)
    with pytest.raises(ValueError, match="no measured training rate for 'inception_v3'"):
        cell_seconds(config, Cell("real", "inception_v3", 0), sizes, rates)


def test_equal_budget_keeps_images_seen_per_cell():
    config = preset("standard")   # equal_budget: a set twice the real split trains half the epochs
    rates = Rates("cpu", {"small_cnn": 100.0}, {"small_cnn": 1e9})
    sizes = Sizes({"a": 500, "b": 200}, 1, 1)
    real = cell_seconds(config, Cell("real", "small_cnn", 0), sizes, rates)
    flip = cell_seconds(config, Cell("hflip", "small_cnn", 0), sizes, rates)
    assert flip == pytest.approx(real, rel=1e-6)


def test_paper_preset_tasks_and_projection():
    config = preset("paper")
    net = {"vgg16": 50.0, "inception_v3": 80.0}
    rates = Rates("gpu", net, {k: 4 * v for k, v in net.items()}, {"dcgan": 0.05, "wgan": 0.1, "wgan-gp": 0.2,
                                                                      "diffusion": 0.1},
                  {"dcgan": 5000.0, "wgan": 5000.0, "wgan-gp": 5000.0, "diffusion": 20.0})
    sizes = Sizes({"a": 4000, "b": 300, "c": 100}, 500, 1000)
    tasks = study_tasks(config, sizes, rates)
    gens = [t for t in tasks if t.name.startswith("generator ")]
    cell_tasks = [t for t in tasks if t.name.startswith("cell ")]
    assert [t.name for t in gens] == ["generator dcgan", "generator wgan", "generator wgan-gp", "generator diffusion"]
    # every set (18 since the diffusion and TSTR rows joined the 13 of the issue) x 2 networks x 3 seeds
    assert [t.name for t in cell_tasks] == [f"cell {c.key}" for c in cells(config)]
    assert len(cell_tasks) == len(AUG_SETS) * 2 * 3 == 108
    for t in cell_tasks:
        set_key = t.name.split(" ")[1].split("|")[0]
        aug = AUG_SETS[set_key]
        assert (t.after is None) == (aug.kind in ("real", "classic"))
    est = projection(config, sizes, rates, (1, 8))
    assert est["wall_s"][1] == pytest.approx(est["total_s"])
    assert est["critical_path_s"] <= est["wall_s"][8] < est["wall_s"][1] / 4
