"""Diffusion page: launch a DDPM (MONAI UNet, DDIM sampling, classifier-free guidance) as a background
job, watch its loss and fixed-noise grids live, and browse finished runs from MLflow."""
import streamlit as st

from core import jobs
from core.charts import diffusion_curves_figure
from pages import ui

ds = ui.setup("Diffusion")
st.title("Diffusion training")
ui.synthetic_badge(ds)
train_counts = ds.class_counts("train")


@st.cache_resource(show_spinner=False)
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def train_form() -> None:
    gpu = cuda_available()
    st.caption("Training uses only the **train split**; the job runs in the background and logs to MLflow. "
               + ("" if gpu else "No GPU here: the defaults are sized for a CPU (a small UNet, a time budget)."))
    left, right = st.columns(2)
    with left:
        mode = st.radio("Model", ["One class", "Conditional (all classes)"], horizontal=True, key="diff_mode",
                        help="One model per class, or one class-conditional model (a class embedding, trained "
                             "with condition dropout so that sampling can use classifier-free guidance).")
        scarce = sorted((c for c in ds.classes if train_counts[c] > 0), key=lambda c: train_counts[c])
        class_name = st.selectbox("Class", scarce, key="diff_class", disabled=mode != "One class",
                                  format_func=lambda c: f"{c} ({train_counts[c]} train images)")
        c1, c2 = st.columns(2)
        minutes = c1.number_input("Time budget (minutes, 0: none)", 0.0, 30 * 24 * 60.0, 0.0 if gpu else 10.0,
                                  step=1.0, key="diff_minutes",
                                  help="Training stops when this time has passed (the last step is saved).")
        max_steps = c2.number_input("Max steps (0: none)", 0, 10_000_000, 2000, step=100, key="diff_steps",
                                    help="Training stops after this many steps; the first limit reached wins.")
        c3, c4 = st.columns(2)
        grid_every = c3.number_input("Grid + checkpoint every N steps", 1, 1_000_000, 200 if gpu else 50,
                                     key="diff_grid_every",
                                     help="A fixed-noise sample grid (DDIM) and a checkpoint every N steps; on a "
                                          "CPU each grid takes seconds to a minute.")
        fid_ok = sum(n > 0 for n in train_counts.values()) >= 2   # the check's encoder is a classifier
        fid_every = c4.number_input("Fidelity check every N steps (0: off)", 0, 1_000_000, 500 if gpu and fid_ok
                                    else 0, key="diff_fid_every", disabled=not fid_ok,
                                    help="KID against the real train split on domain features; the lowest-KID "
                                         "checkpoint is kept (best.pt). Each check samples 64 images per class "
                                         "with DDIM: on a CPU keep N large or leave it off.")
    with right:
        resolution = st.segmented_control("Resolution (px)", [64, 128, 256] if gpu else [64, 128], default=64,
                                          key="diff_res", required=True,
                                          help="The UNet gets one level more per doubling; 256 px needs a GPU.")
        c1, c2 = st.columns(2)
        batch = c1.number_input("Batch", 1, 512, 32 if gpu else 16, step=8, key="diff_batch")
        width = c2.select_slider("UNet width", [8, 16, 32, 64, 128], value=32 if gpu else 16, key="diff_width",
                                 help="Base channels of the UNet (doubling per level). 16 trains about 3x faster "
                                      "than 32 on a CPU.")
        c3, c4 = st.columns(2)
        sample_steps = c3.number_input("DDIM sample steps", 1, 1000, 25 if gpu else 10, key="diff_sample_steps",
                                       help="Denoising steps of the grids and the fidelity check (and the default "
                                            "of generation later); 20-50 is usual.")
        guidance = c4.number_input("Guidance scale", 0.0, 20.0, 2.0, step=0.5, key="diff_guidance",
                                   disabled=mode == "One class",
                                   help="Classifier-free guidance of a conditional model: 1 = none, 1.5-4 usual.")
    with st.expander("Advanced"):
        a1, a2, a3, a4 = st.columns(4)
        lr = a1.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.6f", key="diff_lr")
        seed = a2.number_input("Seed", 0, 2**31 - 1, 0, key="diff_seed")
        device = a3.selectbox("Device", ["auto", "cpu", "cuda"], key="diff_device",
                              help="auto: the GPU if there is one (bf16 autocast), else the CPU.")
        fid_patience = a4.number_input("Stop after N checks without a better KID (0: never)", 0, 10_000, 6,
                                       key="diff_fid_patience", disabled=not fid_every)
    config = {"resolution": int(resolution), "batch": int(batch), "width": int(width),
              "max_steps": int(max_steps) or None, "max_seconds": round(minutes * 60, 1) or None,
              "grid_every": int(grid_every), "sample_steps": int(sample_steps),
              "guidance": float(guidance) if mode != "One class" else 1.0, "lr": float(lr), "seed": int(seed),
              "device": device, "conditional": mode != "One class",
              "fidelity_every": int(fid_every) or None,
              "fidelity_patience": (int(fid_patience) or None) if fid_every else None,
              "data": str(ds.root), "out": "{job_dir}", **({"class": class_name} if mode == "One class" else {})}
    problem = None
    if not max_steps and not minutes:
        problem = ("Time budget and Max steps are both 0, so training would never stop: set a time budget in "
                   "minutes, a step count, or both.")
    elif 0 < minutes * 60 < 1:
        problem = f"Time budget {minutes:g} min is under one second: give at least 0.02 minutes, or 0 for none."
    running = sum(j.state == "running" for j in jobs.list_jobs())
    st.caption(f"{running} job(s) running; at most {jobs.max_concurrent()} at once, others wait in the queue.")
    who = class_name if mode == "One class" else "conditional"
    job = ui.launch_button("train-diffusion", config, "Launch training", label=f"ddpm · {who} · {resolution}px",
                           key="diff_launch", problem=problem)
    if job is not None:
        st.session_state["diff_job_pick"] = job.id  # the Live tab (drawn after this one) follows it
        st.toast(f"Job {job.id} {job.state}.", icon=":material/rocket_launch:")


def run_view(job: jobs.Job | None, run_id: str | None, where: str, grid_every: int | None) -> None:
    """Progress and ETA, the loss curve and the sample grids over time of one diffusion run."""
    ui.generator_run_view(job, run_id, where, lambda history, status: diffusion_curves_figure(history),
                          key="diff", grid_every=grid_every)


def live_panel() -> None:
    ui.live_jobs_panel(["train-diffusion"],
                       lambda job: run_view(job, job.status.get("run_id"), "live", job.status.get("steps_per_epoch")),
                       pick_key="diff_job_pick", empty="No diffusion jobs yet: launch one in the Train tab.")


def past_runs() -> None:
    run = ui.pick_past_run("train-diffusion", key="diff_past_run", empty="No diffusion runs in the tracking store yet.")
    if run is None:
        return
    run_id = run.run_id
    p = run.params
    st.caption(f"Run `{run_id}` · dataset `{run.dataset_id or None}` · {p.get('resolution')} px · UNet width "
               f"{p.get('width')} · batch {p.get('batch')} · "
               + ("conditional" if p.get("conditional") == "True" else f"class {p.get('class_name')}"))
    every = p.get("grid_every_steps")
    run_view(None, run_id, "past", int(every) if every and every.isdigit() else None)


train_tab, live_tab, past_tab = st.tabs(["Train", "Live jobs", "Past runs"])
with train_tab:
    train_form()
with live_tab:
    live_panel()
with past_tab:
    past_runs()
