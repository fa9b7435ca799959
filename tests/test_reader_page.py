"""The Reader study page (AppTest): set up a study from the workspace's sets, read with the buttons
(blinded: nothing on the page names an image), change an answer, resume in a new session, a second
reader, results and the MLflow run; the Quality page's reader-study section. The same page in
headless Chromium is tests/test_reader_browser.py."""
from __future__ import annotations

from pathlib import Path

from core import reader_study as rs
from tests.page_helpers import open_page
from tests.reader_helpers import CLASSES, fake_gan_set


def workspace_sets():
    """The two fake generator sets, in the session workspace's datasets/ (where the page looks)."""
    from core.workspace import workspace_dir

    root = workspace_dir("datasets")
    return [fake_gan_set(root / "rs-syn-dcgan", "aaaa1111bbbb2222", CLASSES, 6, "dcgan", seed=1),
            fake_gan_set(root / "rs-syn-wgan", "cccc3333dddd4444", ["Osteophytes"], 8, "wgan-gp", seed=2)]


def page_text(at) -> str:
    """Everything the page shows as text or holds as a widget value, label or option."""
    parts = []
    for kind in ("markdown", "caption", "info", "success", "error", "warning", "title", "text", "code"):
        parts += [str(e.value) for e in getattr(at, kind)]
    for kind in ("button", "selectbox", "text_input", "multiselect", "number_input", "segmented_control"):
        for w in getattr(at, kind):
            parts += [str(w.label), str(getattr(w, "value", "")), *[str(o) for o in getattr(w, "options", [])]]
    parts += [str(p.proto) for p in at.get("progress")]
    return "\n".join(parts)


def secrets_of(study) -> list[str]:
    """What must never reach a reader: image ids, tokens, file names, source paths, generator sources."""
    key = rs.key_table(study)
    return [*key["image_id"], *key["token"], *[Path(p).name for p in key["path"]],
            *key["path"], *[g for g in key["generator"] if g != "real"], "synthetic-gan"]


def test_set_up_read_resume_and_results(small_phantom, monkeypatch):
    sets = workspace_sets()
    at = open_page("reader", small_phantom.root, monkeypatch)
    at.segmented_control(key="rd_section").set_value("Set up").run()
    at.multiselect(key="rd_sets").set_value([str(d.root) for d in sets]).run()
    at.multiselect(key="rd_classes").set_value(CLASSES)
    at.number_input(key="rd_n_syn").set_value(4)
    at.number_input(key="rd_seed").set_value(11)
    at.button(key="rd_create").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [e.value for e in at.success][0].startswith("Created study rs-")
    at.segmented_control(key="rd_section").set_value("Read").run()
    study = rs.open_study(at.selectbox(key="rd_study").value)
    assert (study.meta["n_real"], study.meta["n_synthetic"], study.meta["config"]["seed"]) == (8, 8, 11)

    at.text_input(key="rd_reader").input("Ann").run()
    order = rs.progress(study, "Ann").order
    hidden = secrets_of(study)
    assert len(at.image) == 1 and "0 / 16" in page_text(at)
    at.button(key="rd_conf_4").click().run()
    at.selectbox(key="rd_class_0").set_value(CLASSES[1])
    at.button(key="rd_syn_btn").click().run()
    at.button(key="rd_real_btn").click().run()
    at.button(key="rd_back_btn").click().run()          # back to the second image: change its answer
    assert "You answered **real** here" in page_text(at)
    at.button(key="rd_syn_btn").click().run()
    at.button(key="rd_real_btn").click().run()
    text = page_text(at)
    assert "3 / 16" in text and not at.exception
    leaked = [h for h in hidden if h in text]
    assert not leaked, leaked
    answers = rs.answers_table(study, "Ann").set_index("token")
    assert answers["answer"].to_dict() == {order[0]: "synthetic", order[1]: "synthetic", order[2]: "real"}
    assert answers.loc[order[0], "confidence"] == 4 and answers.loc[order[0], "class"] == CLASSES[1]
    assert answers["seconds"].notna().all()

    # a new session (a reload, another day): the same name continues at the fourth image
    at2 = open_page("reader", small_phantom.root, monkeypatch)
    at2.selectbox(key="rd_study").set_value(study.id)
    at2.text_input(key="rd_reader").input("Ann").run()
    assert "3 / 16" in page_text(at2)
    at2.button(key="rd_real_btn").click().run()
    assert rs.answers_table(study, "Ann")["token"].tolist()[-1] == order[3]
    # a second reader starts at zero, in an order of their own
    at2.text_input(key="rd_reader").input("Bob").run()
    assert "0 / 16" in page_text(at2)
    at2.button(key="rd_syn_btn").click().run()
    assert rs.answers_table(study, "Bob")["token"].tolist() == [rs.progress(study, "Bob").order[0]]

    at2.segmented_control(key="rd_section").set_value("Results").run()
    assert not at2.exception
    verdicts = [e.value for e in [*at2.success, *at2.info]]
    assert any(v.startswith("**Ann** did not beat chance: ") and " of 4 right" in v for v in verdicts), verdicts
    assert len(at2.dataframe) == 2 and at2.get("plotly_chart")
    at2.button(key="rd_log").click().run()
    done = [e.value for e in at2.success if "Logged as MLflow run" in e.value]
    assert done, [e.value for e in at2.error]
    from core import tracking

    run_id = done[0].split("`")[1]
    assert tracking.client().get_run(run_id).data.tags["medaug.kind"] == "reader-study"


def test_bad_reader_name_is_refused_on_the_page(small_phantom, monkeypatch):
    sets = workspace_sets()
    rs.create_study(small_phantom.root, [d.root for d in sets], CLASSES, n_synthetic_per_source=2, seed=1)
    at = open_page("reader", small_phantom.root, monkeypatch)
    at.segmented_control(key="rd_section").set_value("Read").run()
    at.text_input(key="rd_reader").input("x" * 80).run()
    assert [e.value for e in at.error] and at.error[0].value.startswith("reader: 80 characters") and not at.image


def test_quality_page_shows_the_reader_studies(small_phantom, monkeypatch):
    sets = workspace_sets()
    study = rs.create_study(small_phantom.root, [d.root for d in sets], CLASSES, n_synthetic_per_source=2, seed=2)
    key = rs.key_table(study).set_index("token")
    for t in study.tokens:
        rs.record_answer(study, "Quality reader", t, key.loc[t, "truth"])
    at = open_page("quality", small_phantom.root, monkeypatch)
    at.selectbox(key="q_reader_study").set_value(study.id).run()
    assert not at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert "**Quality reader** beat chance: 8 of 8 right (100%" in text
    assert at.dataframe[-1].value["accuracy [95% CI]"].tolist()[0].startswith("100% [")
    leaked = [h for h in secrets_of(study) if h in page_text(at)]
    assert not leaked, leaked
