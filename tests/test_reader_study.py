"""Reader studies (core.reader_study): the statistics against scipy and by simulated coverage, scoring
against a known answer key, blinding of the study folder, resume, several readers, bad inputs,
the MLflow run, the CLI and the HTML report."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core import reader_study as rs
from tests.reader_helpers import CLASSES, fake_gan_set, two_generator_sets


# --- statistics -------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 12), (3, 12), (6, 12), (12, 12), (21, 40), (33, 40),
                                 (40, 40), (1, 7), (57, 100), (450, 1000)])
def test_wilson_interval_and_binomial_p_value_equal_scipys(k, n):
    ref = stats.binomtest(k, n, 0.5)
    lo, hi = rs.wilson_interval(k, n)
    ci = ref.proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)
    assert rs.binomial_p_value(k, n) == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
    # and against another null (an asymmetric one: the two tails are not mirror images)
    assert rs.binomial_p_value(k, n, 0.3) == pytest.approx(stats.binomtest(k, n, 0.3).pvalue, rel=1e-9, abs=1e-15)


def test_no_answers_give_nan_not_a_number_that_looks_real():
    assert all(math.isnan(v) for v in (*rs.wilson_interval(0, 0), rs.binomial_p_value(0, 0)))


def _coverage(interval, n: int, ps, draws: int, seed: int = 7) -> list[float]:
    """Monte-Carlo coverage of ``interval(k, n)`` for each true p: the share of draws k ~ Bin(n, p)
    whose interval holds p."""
    rng = np.random.default_rng(seed)
    out = []
    for p in ps:
        k = rng.binomial(n, p, size=draws)
        bounds = np.array([interval(int(x), n) for x in range(n + 1)])
        lo, hi = bounds[k, 0], bounds[k, 1]
        out.append(float(((lo <= p) & (p <= hi)).mean()))
    return out


PS, N, DRAWS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95), 40, 4000


def _nominal_95(coverages: list[float]) -> bool:
    """Mean coverage over the p values within [93.5%, 97.5%] and no p below 91%. Monte-Carlo error of
    the mean: about 0.15 points; exact values at n = 40: Wilson 94.9% mean (92.8% at worst), Wald 91.4%,
    a 90% Wilson interval 92.5%, a 99% one above 98%."""
    return 0.935 <= float(np.mean(coverages)) <= 0.975 and min(coverages) >= 0.91


def test_wilson_interval_covers_the_true_proportion_95_percent_of_the_time():
    assert _nominal_95(_coverage(rs.wilson_interval, N, PS, DRAWS)), _coverage(rs.wilson_interval, N, PS, DRAWS)


def test_the_coverage_check_fails_wrong_intervals():
    """The check above would catch a Wald interval, a 90% interval or a 99% one (so it can fail)."""
    def wald(k, n, z=rs.Z95):
        p = k / n
        h = z * math.sqrt(p * (1 - p) / n)
        return p - h, p + h

    assert not _nominal_95(_coverage(wald, N, PS, DRAWS))
    assert not _nominal_95(_coverage(lambda k, n: rs.wilson_interval(k, n, z=1.6448536269514722), N, PS, DRAWS))
    assert not _nominal_95(_coverage(lambda k, n: rs.wilson_interval(k, n, z=2.5758293035489), N, PS, DRAWS))


# --- scoring against a known key ----------------------------------------------------------------------

def known_key() -> pd.DataFrame:
    """6 real, 3 synthetic from g1 (Osteophytes), 3 from g2 (No finding)."""
    rows = [{"token": f"r{i}", "truth": "real", "class": "No finding", "generator": "real", "generator_name": "real"}
            for i in range(6)]
    rows += [{"token": f"a{i}", "truth": "synthetic", "class": "Osteophytes", "generator": "gan:g1",
              "generator_name": "G one"} for i in range(3)]
    rows += [{"token": f"b{i}", "truth": "synthetic", "class": "No finding", "generator": "gan:g2",
              "generator_name": "G two"} for i in range(3)]
    return pd.DataFrame(rows)


def known_answers() -> pd.DataFrame:
    def a(reader, token, answer, cls=None, conf=None):
        return {"reader": reader, "token": token, "answer": answer, "class": cls, "confidence": conf, "seconds": 2.0}

    rows = [a("Ann", "r0", "synthetic")]                                   # changed below: last answer wins
    rows += [a("Ann", f"r{i}", "real", conf=4) for i in range(5)] + [a("Ann", "r5", "synthetic", conf=2)]
    rows += [a("Ann", "a0", "synthetic", "Osteophytes", 5), a("Ann", "a1", "synthetic", "Osteophytes", 5),
             a("Ann", "a2", "synthetic", "No finding", 3)]
    rows += [a("Ann", "b0", "synthetic", "No finding", 1), a("Ann", "b1", "real", "Osteophytes"),
             a("Ann", "b2", "real")]
    rows += [a("Bob", t, "real") for t in known_key()["token"]]            # calls everything real
    rows += [a("Cy", t, tr) for t, tr in zip(known_key()["token"], known_key()["truth"])]   # always right
    return pd.DataFrame(rows)


def test_scores_against_a_known_key():
    s = rs.score_answers(known_answers(), known_key())
    r = s.readers.set_index("reader")
    # Ann: real 5/6 right, g1 3/3 and g2 1/3 called synthetic -> 9 of 12
    ann = r.loc["Ann"]
    assert (ann["n"], ann["correct"], ann["accuracy"]) == (12, 9, 0.75)
    assert ann["p_value"] == pytest.approx(598 / 4096)               # 2 * (C(12,9)+C(12,10)+C(12,11)+C(12,12)) / 2^12
    assert (ann["accuracy_lo"], ann["accuracy_hi"]) == rs.wilson_interval(9, 12)
    assert not ann["beat_chance"] and ann["verdict"].startswith("did not beat chance: 9 of 12 right (75%")
    assert (ann["n_synthetic"], ann["sensitivity"], ann["n_real"], ann["specificity"]) == (6, 4 / 6, 6, 5 / 6)
    assert ann["balanced_accuracy"] == pytest.approx(0.75)
    # class agreement over the 5 synthetic images Ann gave a class for: a0, a1 (yes), a2 (no), b0 (yes), b1 (no)
    assert (ann["n_class"], ann["class_agreement"]) == (5, 3 / 5)
    assert ann["mean_confidence"] == pytest.approx((4 * 5 + 2 + 5 + 5 + 3 + 1) / 10)
    assert ann["median_seconds"] == 2.0
    bob, cy = r.loc["Bob"], r.loc["Cy"]
    assert (bob["accuracy"], bob["sensitivity"], bob["specificity"], bob["beat_chance"]) == (0.5, 0.0, 1.0, False)
    assert bob["p_value"] == pytest.approx(1.0)
    assert cy["correct"] == 12 and cy["p_value"] == pytest.approx(2 / 4096) and cy["beat_chance"]
    assert cy["verdict"].startswith("beat chance: 12 of 12 right (100%")
    assert math.isnan(cy["class_agreement"]) and cy["n_class"] == 0
    pooled = r.loc[rs.POOLED]
    assert (pooled["n"], pooled["correct"]) == (36, 9 + 6 + 12)

    g = s.generators.set_index(["reader", "generator"])
    assert list(s.generators["generator_name"].unique()) == ["G one", "G two"]
    # per generator: its 3 images + the reader's 6 real answers
    assert (g.loc[("Ann", "gan:g1"), "n"], g.loc[("Ann", "gan:g1"), "correct"]) == (9, 3 + 5)
    assert g.loc[("Ann", "gan:g1"), "sensitivity"] == 1.0 and g.loc[("Ann", "gan:g2"), "sensitivity"] == 1 / 3
    assert g.loc[("Ann", "gan:g1"), "class_agreement"] == 2 / 3
    assert g.loc[("Ann", "gan:g2"), "class_agreement"] == 1 / 2
    assert g.loc[(rs.POOLED, "gan:g2"), "n"] == 3 * 9
    # matched arms (r0-r2 paired with g1, r3-r5 with g2): a generator's row counts only its partners
    arms = known_key().assign(arm=["gan:g1"] * 3 + ["gan:g2"] * 3 + ["gan:g1"] * 3 + ["gan:g2"] * 3)
    m = rs.score_answers(known_answers(), arms).generators.set_index(["reader", "generator"])
    assert (m.loc[("Ann", "gan:g1"), "n"], m.loc[("Ann", "gan:g1"), "correct"]) == (6, 3 + 3)
    assert (m.loc[("Ann", "gan:g2"), "n"], m.loc[("Ann", "gan:g2"), "correct"]) == (6, 1 + 2)
    assert m.loc[("Bob", "gan:g1"), "accuracy"] == 0.5
    assert "chance is not 50%" not in m.loc[("Ann", "gan:g1"), "verdict"]
    # without arms, every real image counts for every generator: unbalanced, and the verdict says chance is not 50%
    assert "chance is not 50%" in g.loc[("Ann", "gan:g1"), "verdict"]
    assert "chance is not 50%" not in ann["verdict"]


def test_a_reader_below_chance_is_told_so():
    key = known_key()
    flipped = pd.DataFrame({"reader": "Dee", "token": key["token"],
                            "answer": np.where(key["truth"] == "real", "synthetic", "real")})
    row = rs.score_answers(flipped, key).readers.iloc[0]
    assert row["accuracy"] == 0 and not row["beat_chance"] and row["verdict"].startswith("did worse than chance")


# --- making a study, blinding ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return two_generator_sets(tmp_path_factory.mktemp("reader-sets"))


def make_study(small_phantom, sets, tmp_path, **kw):
    args = dict(classes=CLASSES, n_synthetic_per_source=6, seed=3, out=tmp_path / "study")
    return rs.create_study(small_phantom.root, [d.root for d in sets], **{**args, **kw})


def test_create_study_draws_balanced_blinded_images(small_phantom, sets, tmp_path):
    from PIL import Image

    study = make_study(small_phantom, sets, tmp_path)
    key = rs.key_table(study)
    assert study.meta["n_real"] == study.meta["n_synthetic"] == 12 and len(key) == len(study.tokens) == 24
    assert set(key["generator"]) == {"real", "gan:aaaa1111bbbb2222", "gan:cccc3333dddd4444"}
    assert (key["generator"] == "gan:cccc3333dddd4444").sum() == 6 and set(key["class"]) == set(CLASSES)
    # the wgan-gp set holds only Osteophytes; the dcgan's 6 are spread 3 + 3 over the two classes
    dc = key[key["generator"] == "gan:aaaa1111bbbb2222"]
    assert dc["class"].value_counts().to_dict() == {"No finding": 3, "Osteophytes": 3}
    # matched arms: each generator's images have as many real partners, of the same classes
    real = key[key["truth"] == "real"]
    for g, syn in key[key["truth"] == "synthetic"].groupby("generator"):
        partners = real[real["arm"] == g]
        assert partners["class"].value_counts().to_dict() == syn["class"].value_counts().to_dict()
    assert real["image_id"].is_unique and set(real["arm"]) == set(dc["generator"]) | {"gan:cccc3333dddd4444"}
    # real images come from the real dataset's test split only
    m = small_phantom.manifest.set_index("image_id")
    assert set(m.loc[key.loc[key["truth"] == "real", "image_id"], "split"]) == {"test"}
    # blinded: file names are the tokens, every image has the same size and no text chunk, and
    # study.json (what the page reads) names no image id, path or source
    files = sorted(p.name for p in (study.root / "images").iterdir())
    assert files == sorted(f"{t}.png" for t in study.tokens)
    sizes = set()
    for p in (study.root / "images").iterdir():
        with Image.open(p) as im:
            sizes.add(im.size)
            assert im.mode == "L" and not {k for k in im.info if k not in ("dpi", "gamma")}, im.info
    assert sizes == {(32, 32)}   # the smallest of the sets (real 64 px, synthetic 32 px)
    text = (study.root / "study.json").read_text()
    for value in [*key["image_id"], "synthetic-gan", "gan:", "ph1-"]:
        assert value not in text
    # the same seed draws the same images in the same order (the tokens are new random names)
    again = make_study(small_phantom, sets, tmp_path, out=tmp_path / "again")
    assert rs.key_table(again)["image_id"].tolist() == key["image_id"].tolist()
    assert set(again.tokens).isdisjoint(study.tokens)
    other = make_study(small_phantom, sets, tmp_path, out=tmp_path / "other", seed=4)
    assert rs.key_table(other)["image_id"].tolist() != key["image_id"].tolist()


def test_bad_inputs_name_the_field_and_what_to_do(small_phantom, sets, tmp_path):
    syn = [d.root for d in sets]
    cases = [
        (dict(real_data=tmp_path / "nowhere"), "real_data: ", "no dataset.json"),
        (dict(real_data=sets[0].root), "real_data: ", "holds no real images"),
        (dict(synthetic_sources=[small_phantom.root]), "synthetic_sources: ", "holds no generated images"),
        (dict(synthetic_sources=[]), "synthetic_sources: ", "give a list"),
        (dict(classes=["Vertebral collapse"]), "classes: ", "no synthetic set holds 'Vertebral collapse'"),
        (dict(n_real=500), "n_real=500: ", "ask for at most"),
        (dict(n_real=0), "n_real=0: ", "whole number from 1"),
        (dict(n_synthetic_per_source=-3), "n_synthetic_per_source=-3: ", "whole number"),
        (dict(n_synthetic_per_source=50), "n_synthetic_per_source=50: ", "has only 12 images"),
        (dict(n_synthetic_per_source=2.5), "n_synthetic_per_source=2.5: ", "whole number"),
        (dict(real_split="holdout"), "real_split='holdout': ", "choose one of"),
        (dict(classes=["Osteophytes"], n_synthetic_per_source=6), "n_synthetic_per_source: pairing generator ",
         "needs 6 more real 'Osteophytes' image(s), but the test split of"),
    ]
    for change, start, words in cases:
        args = dict(real_data=small_phantom.root, synthetic_sources=syn, classes=CLASSES, n_synthetic_per_source=4,
                    out=tmp_path / "bad")
        with pytest.raises(ValueError) as e:
            rs.create_study(**{**args, **change})
        assert str(e.value).startswith(start) and words in str(e.value), (change, str(e.value))
    assert not (tmp_path / "bad").exists()
    other = fake_gan_set(tmp_path / "syn-other", "eeee5555ffff6666", ["Other lesions"], 2)
    with pytest.raises(ValueError, match="^classes: 'Other lesions' has no real images in the val split of .*; drop"):
        rs.create_study(small_phantom.root, [other.root], ["Other lesions"], n_synthetic_per_source=2,
                        out=tmp_path / "bad", real_split="val")
    study = make_study(small_phantom, sets, tmp_path)
    t = study.tokens[0]
    for call, words in [(lambda: rs.record_answer(study, "Ann", t, "maybe"), "answer='maybe': answer 'real' or"),
                        (lambda: rs.record_answer(study, "Ann", "0" * 16, "real"), "token: not an image"),
                        (lambda: rs.record_answer(study, "Ann", t, "real", confidence=6), "confidence=6: give a whole"),
                        (lambda: rs.record_answer(study, "Ann", t, "real", class_name="Nope"), "class_name='Nope'"),
                        (lambda: rs.record_answer(study, "  ", t, "real"), "reader: enter your name"),
                        (lambda: rs.record_answer(study, "x" * 61, t, "real"), "reader: 61 characters"),
                        (lambda: rs.record_answer(study, "A\x00n", t, "real"), "reader: the name holds control"),
                        (lambda: rs.open_study(tmp_path / "nothing"), "study: "),
                        (lambda: rs.create_study(small_phantom.root, syn, CLASSES, n_synthetic_per_source=2,
                                                 out=study.root), "out: ")]:
        with pytest.raises(ValueError) as e:
            call()
        assert words in str(e.value), str(e.value)


# --- readers: resume, several readers, changed answers ----------------------------------------------------

def test_answers_survive_a_new_session_and_readers_stay_apart(small_phantom, sets, tmp_path):
    study = make_study(small_phantom, sets, tmp_path)
    first = rs.progress(study, "Ann")
    assert (first.done, first.total, first.position, first.next_token) == (0, 24, 0, first.order[0])
    for t in first.order[:5]:
        rs.record_answer(study, "Ann", t, "synthetic", confidence=3, seconds=1.5)
    # a new session (nothing kept in memory): opened from disk by its id-less folder path
    again = rs.progress(rs.open_study(str(study.root)), "Ann")
    assert again.order == first.order and again.done == 5 and again.next_token == first.order[5]
    assert again.position == 5
    # a second reader: own file, own order, own progress
    bob = rs.progress(study, "Bob")
    assert bob.done == 0 and sorted(bob.order) == sorted(first.order) and bob.order != first.order
    rs.record_answer(study, "Bob", bob.order[0], "real")
    assert rs.readers(study) == ["Ann", "Bob"]
    # "Ann" and "ann" are two readers with two files
    rs.record_answer(study, "ann", first.order[0], "real")
    assert len(list((study.root / "readers").glob("*.jsonl"))) == 3 and rs.progress(study, "Ann").done == 5
    # a changed answer: the last one wins, nothing is counted twice
    rs.record_answer(study, "Ann", first.order[0], "real", class_name=CLASSES[1], confidence=5)
    table = rs.answers_table(study, "Ann")
    assert len(table) == 5
    assert table.set_index("token").loc[first.order[0], ["answer", "confidence"]].tolist() == ["real", 5]
    # a line torn by a kill mid-write is skipped, and the next answer still lands on its own line
    path = study.root / "readers" / rs.reader_file_name("Ann")
    with open(path, "a") as f:
        f.write('{"reader": "Ann", "token": "' + first.order[6])
    rs.record_answer(study, "Ann", first.order[7], "real")
    assert rs.progress(study, "Ann").done == 6
    assert all(json.loads(line) for line in path.read_text().splitlines()[-1:])
    scores = rs.score(study)
    assert scores.readers.set_index("reader").loc["Ann", "n"] == 6
    assert scores.readers["reader"].tolist() == ["Ann", "Bob", "ann", rs.POOLED]


def test_reader_file_names_are_safe_and_distinct():
    names = ["Ann", "ann", "A n n", "Zoë", "../../etc/passwd", "Dr. O'Brien", "李"]
    files = [rs.reader_file_name(n) for n in names]
    assert len(set(files)) == len(names)
    assert all("/" not in f and not f.startswith(".") and f.endswith(".jsonl") for f in files)
    assert rs.reader_file_name(" Ann ") == rs.reader_file_name("Ann")   # stripped, not a new reader


# --- MLflow, CLI, HTML report ---------------------------------------------------------------------------

def test_log_study_cli_and_report(small_phantom, sets, tmp_path, capsys):
    from core import tracking
    from core.cli import main
    from core.report import build_report

    code = main(["reader-study", "create", "--real", str(small_phantom.root), "--synthetic", str(sets[0].root),
                 "--synthetic", str(sets[1].root), "--classes", *CLASSES, "--n-per-source", "4", "--seed", "5",
                 "--out", str(tmp_path / "cli-study")])
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0 and summary["images"] == 16 and summary["n_real"] == 8 and summary["generators"] == 2
    study = rs.open_study(summary["folder"])
    key = rs.key_table(study).set_index("token")
    for t in rs.progress(study, "Ann").order:          # Ann is always right, Bob always says "real"
        rs.record_answer(study, "Ann", t, key.loc[t, "truth"], class_name=key.loc[t, "class"], confidence=4)
        rs.record_answer(study, "Bob", t, "real")
    code = main(["reader-study", "score", str(study.root), "--log"])
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0 and summary["run_id"]
    assert [r["accuracy"] for r in summary["readers"]] == [1.0, 0.5, 0.75]
    run = tracking.client().get_run(summary["run_id"])
    assert run.data.tags["medaug.kind"] == "reader-study" and run.data.params["seed"] == "5"
    assert run.data.metrics["reader/Ann/accuracy"] == 1.0 and run.data.metrics["reader/Bob/sensitivity"] == 0.0
    assert run.data.metrics["generator/gan:aaaa1111bbbb2222/sensitivity"] == 0.5   # pooled: Ann 4/4, Bob 0/4
    arts = tracking.list_artifacts(summary["run_id"], "reader-study")
    assert {f"reader-study/{n}" for n in ("key.json", "readers.csv", "generators.csv", "answers.csv")} <= set(arts)
    logged_key = json.loads(tracking.download_artifact(summary["run_id"], "reader-study/key.json").read_text())
    assert {i["token"]: i["truth"] for i in logged_key["items"]} == key["truth"].to_dict()

    html = build_report([summary["run_id"]])
    assert "Reader study: real or synthetic?" in html
    assert "<b>Ann</b> beat chance: 16 of 16 right (100%" in html
    assert "<b>Bob</b> did not beat chance: 8 of 16 right (50%" in html
    lo, hi = rs.wilson_interval(16, 16)
    assert f"100% [{lo:.0%}, {hi:.0%}]" in html and "dcgan conditional · gan:aaaa1111" in html
    assert 'class="chart"' not in html     # one value per metric: the tables, not one-point curves

    assert main(["reader-study", "create", "--real", str(tmp_path / "none"), "--synthetic", str(sets[0].root)]) == 2
    failed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert failed["ok"] is False and failed["error"].startswith("real_data: ")
