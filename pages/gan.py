"""GAN page: launch DCGAN / WGAN / WGAN-GP training as a background job, watch it learn live,
browse finished runs from MLflow, and turn checkpoints into synthetic minority images."""
from pathlib import Path

import streamlit as st

from core import jobs
from core.balance import class_balance_plan
from core.charts import balance_plan_figure, gan_curves_figure
from core.gan.variants import VARIANTS
from pages import ui

ds = ui.setup("GAN")
st.title("GAN training")
ui.synthetic_badge(ds)
train_counts = ds.class_counts("train")


def train_form() -> None:
    st.caption("Training uses only the **train split**; the job runs in the background and logs to MLflow.")
    left, right = st.columns(2)
    with left:
        mode = st.radio("Model", ["One class", "Conditional (all classes)"], horizontal=True, key="gan_mode",
                        help="One model per class, or one class-conditional model (label embedding in G, "
                             "projection discriminator) where small classes borrow structure from large ones.")
        scarce = sorted((c for c in ds.classes if train_counts[c] > 0), key=lambda c: train_counts[c])
        class_name = st.selectbox("Class", scarce, key="gan_class", disabled=mode != "One class",
                                  format_func=lambda c: f"{c} ({train_counts[c]} train images)")
        variant = st.segmented_control("Variant", list(VARIANTS), default="dcgan", key="gan_variant",
                                       required=True)
        v = VARIANTS[variant]
        extra = f", clip {v.clip}" if v.clip else f", gradient penalty λ {v.gp_lambda:g}" if v.gp_lambda else ""
        st.caption(f"{v.optimizer} lr {v.lr:g}, n_critic {v.n_critic}{extra}, batch norm in D: "
                   f"{v.critic_norm == 'batch'}. {v.reference}")
    with right:
        resolution = st.segmented_control("Resolution (px)", [64, 128, 256], default=64, key="gan_res",
                                          required=True, help="The networks grow with the resolution.")
        c1, c2 = st.columns(2)
        batch = c1.number_input("Batch", 8, 512, v.default_batch, step=8, key="gan_batch")
        epochs = c2.number_input("Epochs", 1, 10_000, 25, key="gan_epochs",
                                 help="An epoch is ceil(images / batch) generator steps, at least 20.")
        n_images = train_counts[class_name] if mode == "One class" else sum(train_counts.values())
        diffaug = st.toggle("DiffAugment (translation + cutout)", value=n_images < 200, key="gan_diffaug",
                            help="Differentiable augmentation of real and fake images: keeps D from "
                                 "memorising datasets of tens of images.")
    with st.expander("Advanced"):
        a1, a2, a3, a4, a5 = st.columns(5)
        lr = a1.number_input("Learning rate", 1e-6, 1e-2, v.lr, format="%.6f", key=f"gan_lr_{variant}")
        n_critic = a2.number_input("Critic steps per G step", 1, 20, v.n_critic, key=f"gan_ncritic_{variant}")
        seed = a3.number_input("Seed", 0, 2**31 - 1, 0, key="gan_seed")
        width = a4.select_slider("Network width", [16, 32, 64, 128], value=64, key="gan_width",
                                 help="Base channel count of G and D (64 = the DCGAN paper). Smaller trains "
                                      "much faster on a CPU.")
        device = a5.selectbox("Device", ["auto", "cpu", "cuda"], key="gan_device",
                              help="auto: the GPU if there is one (bf16 autocast), else the CPU.")
        f1, f2 = st.columns(2)
        two_classes = sum(n > 0 for n in train_counts.values()) >= 2   # the check's encoder is a classifier
        fid_every = f1.number_input("Fidelity check every N steps (0: off)", 0, 100_000, 50 if two_classes else 0,
                                    key="gan_fid_every", disabled=not two_classes,
                                    help="KID against the real train split on domain features; the lowest-KID "
                                         "checkpoint is kept (best.pt) and measured at the end (precision, recall).")
        fid_patience = f2.number_input("Stop after N checks without a better KID (0: never)", 0, 10_000, 6,
                                       key="gan_fid_patience")
    config = {"variant": variant, "resolution": int(resolution), "batch": int(batch), "epochs": int(epochs),
              "diffaug": diffaug, "lr": float(lr), "n_critic": int(n_critic), "seed": int(seed), "device": device,
              "width": int(width), "conditional": mode != "One class",
              "fidelity_every": int(fid_every) or None,
              "fidelity_patience": (int(fid_patience) or None) if fid_every else None,
              "data": str(ds.root), "out": "{job_dir}", **({"class": class_name} if mode == "One class" else {})}
    queued = sum(j.state == "running" for j in jobs.list_jobs())
    st.caption(f"{queued} job(s) running; at most {jobs.max_concurrent()} at once, others wait in the queue.")
    who = class_name if mode == "One class" else "conditional"
    job = ui.launch_button("train-gan", config, "Launch training", label=f"{variant} · {who} · {resolution}px",
                           key="gan_launch")
    if job is not None:
        st.session_state["gan_job_pick"] = job.id  # the Live tab (drawn after this one) follows it
        st.toast(f"Job {job.id} {job.state}.", icon=":material/rocket_launch:")


def run_view(job: jobs.Job | None, run_id: str | None, where: str) -> None:
    """Progress, curves and the epoch-by-epoch sample grid of one GAN run."""
    ui.generator_run_view(job, run_id, where, lambda history, status: gan_curves_figure(
        history, status.get("steps_per_epoch")), key="gan")


def live_panel() -> None:
    ui.live_jobs_panel(["train-gan"], lambda job: run_view(job, job.status.get("run_id"), "live"),
                       pick_key="gan_job_pick", empty="No GAN jobs yet: launch one in the Train tab.")


def past_runs() -> None:
    run = ui.pick_past_run("train-gan", key="gan_past_run", empty="No GAN runs in the tracking store yet.")
    if run is None:
        return
    run_id = run.run_id
    st.caption(f"Run `{run_id}` · dataset `{run.dataset_id or None}` · "
               f"variant {run.params.get('variant')} · {run.params.get('resolution')} px")
    run_view(None, run_id, "past")


def checkpoints() -> dict[str, str]:
    """Finished GAN and diffusion jobs with a checkpoint: label -> (class or "conditional", checkpoint path)."""
    out = {}
    for j in jobs.list_jobs():
        ckpt = j.status.get("best_checkpoint") or j.status.get("checkpoint")   # the lowest-KID one when checked
        if j.command in ("train-gan", "train-diffusion") and j.state == "finished" and ckpt and Path(ckpt).is_file():
            cfg = j.status.get("config", {})
            who = "conditional" if cfg.get("conditional") else cfg.get("class_name") or "?"
            q = j.status.get("quality") or {}
            flag = "" if not q else " · usable" if q.get("usable") else " · NOT usable (low precision)"
            out[f"{j.label} ({j.id}){flag}"] = (who, ckpt)
    return out


def synthesis_panel() -> None:
    st.markdown("**Balancing planner** — how many synthetic images each class needs to reach a target "
                "(training split only; synthetic images never enter validation or test).")
    c1, c2, c3 = st.columns([2, 3, 2])
    how = c1.selectbox("Target per class", ["largest class", "median class", "a number"], key="bal_how")
    target = {"largest class": "max", "median class": "median"}.get(how) or \
        c1.number_input("Images per class", 1, 100_000, max(train_counts.values()), key="bal_n")
    chosen = c2.multiselect("Classes to top up", ds.classes, default=[c for c in ds.classes
                            if train_counts[c] < max(train_counts.values())], key="bal_classes")
    cap = c3.number_input("At most synthetic per real image", 0.5, 100.0, 5.0, step=0.5, key="bal_cap",
                          help="A GAN trained on 14 images should not be asked for 500.")
    plan = class_balance_plan(train_counts, target, chosen, cap)
    left, right = st.columns([3, 2])
    left.plotly_chart(balance_plan_figure(plan), key="bal_chart")
    right.dataframe(plan, hide_index=True, key="bal_table")

    ckpts = checkpoints()
    need = plan[plan["synthetic"] > 0]["class"].tolist()
    if not need:
        st.success("Every chosen class is at or above the target.")
        return
    if not ckpts:
        st.info("Train a GAN or a diffusion model first (one per class, or a conditional one); finished runs "
                "appear here.")
        return
    cond = [k for k, (who, _) in ckpts.items() if who == "conditional"]
    mapping = {}
    cols = st.columns(min(4, len(need)))
    for i, name in enumerate(need):
        options = [k for k, (who, _) in ckpts.items() if who == name] + cond
        pick = cols[i % len(cols)].selectbox(name, options or ["— no model for this class —"], key=f"bal_ck_{i}")
        if pick in ckpts:
            who, path = ckpts[pick]
            mapping[name if who == name else "*"] = path  # "*": a conditional model, told the class
    missing = [n for n in need if n not in mapping and "*" not in mapping]
    if missing:
        st.warning(f"No model for {', '.join(missing)}: train one, or a conditional model.")
        return
    config = {"data": str(ds.root), "target": target, "cap": cap, "out": "{job_dir}/synthetic",
              "classes": list(chosen), "checkpoints": mapping}
    job = ui.launch_button("balance", config, "Generate the plan's images", icon=":material/auto_awesome:",
                           label=f"balance · {int(plan['synthetic'].sum())} synthetic images", key="bal_go")
    if job is not None:
        st.toast(f"Generation job {job.id} {job.state}.")
    gen = [j for j in jobs.list_jobs() if j.command == "balance"][:5]
    for j in gen:
        with st.container(border=True):
            ui.job_progress(j)
            if j.state == "finished" and j.summary().get("out"):
                st.caption(f"Synthetic set: `{j.summary()['out']}` · {j.summary().get('generated')}")


train_tab, live_tab, past_tab, synth_tab = st.tabs(["Train", "Live jobs", "Past runs", "Synthesize & balance"])
with train_tab:
    train_form()
with live_tab:
    live_panel()
with past_tab:
    past_runs()
with synth_tab:
    synthesis_panel()
