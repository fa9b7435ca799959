"""HTML reports: content of a study report, escaping, the CLI, and the file opened offline in
headless Chromium (every chart drawn with no network)."""
from __future__ import annotations

import base64
import json
import os
import re
import uuid
from pathlib import Path

import pytest

from core import report, tracking
from core.cli import main as cli_main
from tests.browser import CHROMIUM, chromium_page
from tests.test_runs import fill_runs

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def study(session_home, small_phantom, tmp_path_factory):
    exp = f"test-report-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDAUG_HOME", str(session_home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
        ids = fill_runs(exp, small_phantom, tmp_path_factory.mktemp("grids"), n_gan=2, epochs=3)
        out = tmp_path_factory.mktemp("report") / "study.html"
        summary = report.write_report([ids["study-A"], ids["gan-dcgan"], ids["gan-wgan"]], out, grids_per_run=2)
    return ids, out, summary


def diff_rows(html: str) -> dict[str, bool]:
    """param -> highlighted, from the report's params table."""
    part = html.split("<h2>Params</h2>")[1].split("<h2>")[0].split("<tbody>")[1]
    return {m.group(2): bool(m.group(1)) for m in re.finditer(r'<tr( class="diff")?><th>([a-z_]+)</th>', part)}


def test_study_report_content(study, small_phantom):
    ids, out, summary = study
    html = out.read_text()
    assert summary["bytes"] == len(html.encode()) and summary["out"] == str(out)
    assert "<title>Study study-A</title>" in html
    for name in ("study-A", "cls-seed0", "cls-seed1", "gan-dcgan", "gan-wgan"):   # children came with the parent
        assert name in html
    assert small_phantom.content_hash in html and small_phantom.id in html
    assert tracking.code_version() in html
    # plotly.js inline exactly once, nothing fetched from the network
    assert html.count("window.PlotlyConfig") == 1
    assert not re.search(r"<script[^>]+src=", html) and not re.search(r"<link[^>]+href=\"?http", html)
    assert summary["charts"] == html.count("Plotly.newPlot") == 4   # loss_d, loss_g, train_loss, val_accuracy
    # GAN grids as base64 images: 2 per GAN run (first and last epoch)
    imgs = re.findall(r'<figure><img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', html)
    assert summary["images"] == 4 and len(imgs) == 4
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    assert "grids · epoch 1" in html and "grids · epoch 3" in html and "grids · epoch 2" not in html
    # params diff: the rows that differ are marked, equal ones not
    study_rows = diff_rows(html)
    assert study_rows["net"] and study_rows["variant"]     # a param only some runs have differs
    pair = diff_rows(report.build_report([ids["gan-dcgan"], ids["gan-wgan"]], include_children=False))
    assert pair == {"seed": True, "variant": True, "batch": False, "lr": False, "resolution": False,
                    "steps_per_epoch": False}
    # final and best values: cls-seed1's val_accuracy ends at 0.65, peaked at 0.7 (epoch 2)
    assert re.search(r"<th>val_accuracy</th><td>cls-seed1 \([0-9a-f]{6}\)</td><td class=\"num\">0\.65</td>"
                     r"<td>3</td><td>max</td><td class=\"num\">0\.7</td><td>2</td>", html)
    assert "Configs and tags" in html and "&quot;net&quot;: &quot;small_cnn&quot;" in html


def test_names_are_escaped(tmp_path):
    exp = f"test-report-esc-{uuid.uuid4().hex[:6]}"
    with tracking.start_run("augment", {"op": "<b>flip</b>"}, run_name="<script>alert(1)</script>",
                            experiment=exp) as run:
        run.log_metrics({"loss": 1.0}, 1)
    html = report.build_report([run.run_id])
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;flip&lt;/b&gt;" in html


def test_cli_writes_a_report_and_explains_bad_input(study, tmp_path, capsys):
    ids, _, _ = study
    out = tmp_path / "one.html"
    assert cli_main(["report", "--run", ids["gan-wgan"], "--out", str(out)]) == 0   # python -m core report ...
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["ok"] and summary["command"] == "report" and summary["out"] == str(out)
    assert summary["charts"] == 2 and out.is_file()
    assert "<title>Run gan-wgan</title>" in out.read_text()

    assert cli_main(["report", "--run", "f" * 32, "--out", str(tmp_path / "x.html")]) == 2
    err = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert not err["ok"] and "f" * 32 in err["error"] and "not in the tracking store" in err["error"]
    assert cli_main(["report", "--run", ids["gan-wgan"], "--out", str(tmp_path / "x.pdf")]) == 2
    assert ".html" in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")
def test_report_opens_offline_in_chromium(study):
    _, out, summary = study
    SHOTS.mkdir(exist_ok=True)
    requests: list[str] = []
    with chromium_page(1280, 900) as page:
        def offline(route):
            requests.append(route.request.url)
            if route.request.url.startswith(("file:", "data:")):
                route.continue_()
            else:
                route.abort()
        page.route("**/*", offline)
        page.goto(out.as_uri())
        page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= "
                               f"{summary['charts']}", timeout=30_000)
        assert page.evaluate("() => typeof Plotly") == "object"
        assert page.locator(".js-plotly-plot").count() == summary["charts"]
        assert page.locator("figure img").count() == summary["images"]
        assert page.evaluate("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        # a chart is interactive: its legend lists the runs
        assert "gan-dcgan" in page.inner_text(".js-plotly-plot >> nth=0")
        page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
