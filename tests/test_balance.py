"""The balancing planner: targets, caps, class choice, validation, and its chart."""
from __future__ import annotations

import pytest

from core.balance import class_balance_plan, resolve_target
from core.charts import balance_plan_figure

COUNTS = {"No finding": 330, "Osteophytes": 230, "Disc space narrowing": 40, "Vertebral collapse": 14}


def test_target_max_fills_every_class_to_the_largest():
    plan = class_balance_plan(COUNTS, "max").set_index("class")
    assert plan.attrs["target"] == 330
    assert plan["after"].tolist() == [330, 330, 330, 330]
    assert plan.loc["Vertebral collapse", "synthetic"] == 316
    assert plan.loc["No finding", "synthetic"] == 0


def test_number_target_classes_and_cap():
    plan = class_balance_plan(COUNTS, 100, classes=["Vertebral collapse", "Disc space narrowing"],
                              max_synthetic_per_real=3).set_index("class")
    assert plan.loc["Osteophytes", "synthetic"] == 0           # not chosen
    assert plan.loc["Disc space narrowing", "synthetic"] == 60  # 100 - 40, under the cap of 120
    assert plan.loc["Vertebral collapse", "synthetic"] == 42    # capped at 3 x 14
    assert plan.loc["Vertebral collapse", "synthetic_per_real"] == 3.0


def test_median_and_validation():
    assert resolve_target(COUNTS, "median") == 230
    with pytest.raises(ValueError, match="target='most'"):
        resolve_target(COUNTS, "most")
    with pytest.raises(ValueError, match="between 1 and"):
        resolve_target(COUNTS, 0)
    with pytest.raises(ValueError, match="not in the dataset"):
        class_balance_plan(COUNTS, "max", classes=["Fracture"])
    with pytest.raises(ValueError, match="no images"):
        resolve_target({"a": 0}, "max")


def test_plan_figure_shows_real_synthetic_and_target():
    fig = balance_plan_figure(class_balance_plan(COUNTS, "max"))
    names = [t.name for t in fig.data]
    assert names == ["real (train)", "synthetic to add"]
    assert list(fig.data[1].y) == [0, 100, 290, 316]
    assert any("target 330" in a.text for a in fig.layout.annotations)
