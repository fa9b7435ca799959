"""core.charts.cell_board_html: the Classify page's board of a study's cells by state (plain HTML)."""
from __future__ import annotations

import re

from core.charts import CELL_STATE_STYLES, cell_board_html
from core.study.grid import StudyConfig, cells


def squares(html: str) -> list[tuple[str, str]]:
    """(state class, title) of every cell square, in document order."""
    return re.findall(r'<span class="medaug-cell medaug-cell-([^"]+)" title="([^"]*)"', html)


def test_one_square_per_cell_with_its_state_and_tooltip():
    config = StudyConfig(sets=("real", "hflip", "dcgan"), networks=("small_cnn", "resnet18"), seeds=(0, 1))
    grid = cells(config)
    states = {c.key: ("pending", "running", "finished", "failed")[i % 4] for i, c in enumerate(grid)}
    failed = {k: "worker died 4 times" for k, v in states.items() if v == "failed"}
    html = cell_board_html(states, failed)
    found = squares(html)
    assert len(found) == len(grid) == 12
    by_key = {title.split(": ")[0]: (state, title) for state, title in found}
    assert set(by_key) == set(states)
    for key, state in states.items():
        assert by_key[key][0] == state
        assert by_key[key][1] == f"{key}: {state}" + (" — worker died 4 times" if state == "failed" else "")
    # rows by set (in the grid's order), columns by network x seed, grouped by network
    assert html.count('class="medaug-board-network"') == 2
    assert html.index(">small_cnn<") < html.index(">resnet18<")
    first_net = html[html.index(">small_cnn<"):html.index(">resnet18<")]
    assert [t.split(":")[0] for _, t in squares(first_net)] == \
        ["real|small_cnn|s0", "real|small_cnn|s1", "hflip|small_cnn|s0", "hflip|small_cnn|s1",
         "dcgan|small_cnn|s0", "dcgan|small_cnn|s1"]
    # the legend counts each state once
    counts = {s: sum(v == s for v in states.values()) for s in CELL_STATE_STYLES}
    for state, n in counts.items():
        assert f"{state} {n}</span>" in html


def test_names_and_reasons_are_escaped_and_set_labels_used():
    states = {'<b>x</b>|net"1|s0': "failed", "real|small_cnn|s0": "finished"}
    html = cell_board_html(states, {'<b>x</b>|net"1|s0': 'boom: <script>alert("x")</script>'},
                           {"real": "real only"})
    assert "<script>" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html and "net&quot;1" in html
    assert ">real only</div>" in html
    assert sorted(s for s, _ in squares(html)) == ["failed", "finished"]


def test_gaps_and_odd_keys_do_not_break_the_board():
    html = cell_board_html({"real|small_cnn|s0": "finished", "hflip|small_cnn|s1": "running", "odd-key": "pending"})
    assert len(squares(html)) == 3
    assert cell_board_html({}).count("medaug-cell ") == 0
