"""Explore a generator: for a GAN or diffusion checkpoint, a latent interpolation between two seeds, the same
noise across every class (conditional models), and a sample's nearest real training images in the
memorization audit's features, to check it for copying. All logic is in core.explorer; this page only
collects inputs, calls it (cached per checkpoint file and inputs) and draws."""
import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from core import explorer
from core.generators import generator_checkpoint
from pages import ui

TYPE_PATH = "Type a path…"
SHOW_PX = 128     # samples are enlarged (nearest neighbour) to this size so 32-64 px images stay crisp
SEED_MAX = 2**31 - 1

ds = ui.setup("Explore a generator")
st.title("Explore a generator")
ui.synthetic_badge(ds)
st.caption("Walk a trained GAN's or diffusion model's noise space, see one noise drawn as every class, and put any "
           "sample beside its nearest real training images to check it for copying. Sampling runs here, in the "
           "page: a GAN draws hundreds of images a second, a diffusion model runs its UNet once per DDIM step "
           "(twice with guidance) for every image, so on a CPU keep the frames and steps few.")


# --- cached calls into core.explorer (keyed on the checkpoint's path and mtime and the inputs) ----------

@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=4)
def load_generator(path: str, mtime: float):
    from core.generators import open_generator

    return open_generator(path)


# (a cached function may not draw into the page, so sampling shows a spinner rather than a progress bar)
@st.cache_data(show_spinner=False, max_entries=32)
def strip(path: str, mtime: float, seed_a: int, seed_b: int, frames: int, class_name, steps, guidance) -> np.ndarray:
    return explorer.interpolation(load_generator(path, mtime), seed_a, seed_b, frames, class_name, steps=steps,
                                  guidance=guidance)


@st.cache_data(show_spinner=False, max_entries=32)
def sweep(path: str, mtime: float, seed: int, n_per_class: int, steps, guidance) -> np.ndarray:
    return explorer.class_sweep(load_generator(path, mtime), seed, n_per_class, steps=steps, guidance=guidance)


@st.cache_data(show_spinner=False, max_entries=64)
def one_sample(path: str, mtime: float, seed: int, class_name, steps, guidance) -> np.ndarray:
    gen = load_generator(path, mtime)
    return gen.sample(1, class_name, seed, steps=steps, guidance=guidance).images


@st.cache_resource(show_spinner="Features of the real training images…", max_entries=4)
def reference(_ds, content_hash: str, size: int) -> explorer.RealReference:
    return explorer.real_reference(_ds, size)


@st.cache_data(show_spinner=False, max_entries=64)
def neighbours(images: np.ndarray, classes: tuple, content_hash: str, k: int, gen_classes: tuple,
               _ref=None) -> explorer.NearestReal:
    return explorer.nearest_real(images, list(classes), _ref, k, classes=list(gen_classes) or None)


def sampling(n: int) -> str:
    """What a spinner says while ``n`` images are sampled."""
    if gen.family == "gan":
        return f"Sampling {n} images…"
    o = gen.options(steps, guidance)
    passes = n * o["steps"] * (2 if gen.conditional and o["guidance"] != 1 else 1)   # guidance: a second pass
    return f"Sampling {n} images: DDIM {o['steps']} steps, guidance {o['guidance']:g}, {passes} UNet passes…"


def enlarge(image: np.ndarray) -> np.ndarray:
    f = max(1, SHOW_PX // image.shape[0])
    return np.repeat(np.repeat(image, f, axis=0), f, axis=1)


def draw_strip(images, captions: list[str], slots: int | None = None) -> None:
    """Images side by side in equal columns (``slots`` of them: a shorter row keeps the same image size)."""
    cols = st.columns(slots or len(images))
    for col, image, caption in zip(cols, images, captions):
        col.image(enlarge(image), caption=caption, width="stretch")


# --- the checkpoint -------------------------------------------------------------------------------------

def pick_checkpoint() -> Path | None:
    found = {g.label: g.path for g in explorer.finished_generators()}
    left, right = st.columns([3, 2])
    choice = left.selectbox("Checkpoint", [*found, TYPE_PATH], key="ex_ckpt",
                            help="Finished train-gan and train-diffusion jobs of this workspace (their best.pt when a "
                                 "fidelity check chose one), or any checkpoint file or training folder.")
    if choice != TYPE_PATH:
        return found[choice]
    if not found:
        left.caption("No finished GAN or diffusion job yet: train one on the GAN or Diffusion page, or type a path.")
    typed = right.text_input("Checkpoint file or training folder", key="ex_path",
                             placeholder="workspace/jobs/<job id>/out/checkpoint.pt").strip()
    return generator_checkpoint(Path(typed).expanduser()) if typed else None


path = pick_checkpoint()
if path is None:
    st.stop()
if not path.is_file():
    st.error(f"`{path}`: no checkpoint here. Give a checkpoint.pt / best.pt written by train-gan or train-diffusion, "
             f"or its training folder.", icon=":material/error:")
    st.stop()
mtime = path.stat().st_mtime
try:
    gen = load_generator(str(path), mtime)
except (ValueError, OSError) as e:   # CheckpointError is a ValueError; the message names the file
    st.error(str(e), icon=":material/error:")
    st.stop()

ckey = hashlib.sha1(str(path).encode()).hexdigest()[:8]   # per-checkpoint widget keys: defaults follow the model
st.markdown(f"**{gen.describe()}**")
classes_text = f"Conditional over {len(gen.classes)} classes: {', '.join(gen.classes)}. " if gen.conditional else ""
st.caption(f"{classes_text}Run `{gen.run_id}` · `{path}`")
steps = guidance = None
if gen.family == "diffusion":
    c = gen.config
    s1, s2, note = st.columns([2, 2, 3])
    steps = s1.slider("DDIM steps", 1, min(200, c.timesteps), min(c.sample_steps, 200), key=f"ex_steps_{ckey}",
                      help=f"Denoising steps per image (trained to sample with {c.sample_steps}); the cost grows "
                           f"with them.")
    guidance = s2.slider("Guidance", 0.0, 10.0, float(c.guidance), 0.5, key=f"ex_guidance_{ckey}",
                         disabled=not gen.conditional,
                         help="Classifier-free guidance scale: 1 is none, higher follows the class more closely "
                              "(and costs a second UNet pass per step). Conditional models only.")
    note.caption("DDIM at eta = 0 is deterministic: the same start noise, steps and guidance give the same image, "
                 "so a path through the start noise is a path through images.")
    if not gen.conditional:
        guidance = None


# --- interpolation ---------------------------------------------------------------------------------------

st.subheader("Interpolation")
what = "z" if gen.family == "gan" else "start noise x_T"
st.caption(f"Spherical interpolation (slerp) of the {what} from seed A's to seed B's: the great circle keeps the "
           f"noise at its usual norm, where a straight line would pass through unusually small noise mid-way. "
           f"The end frames are the samples of the two seeds.")
c1, c2, c3, c4 = st.columns(4)
seed_a = int(c1.number_input("Seed A", 0, SEED_MAX, 0, key="ex_seed_a"))
seed_b = int(c2.number_input("Seed B", 0, SEED_MAX, 1, key="ex_seed_b"))
frames = int(c3.slider("Frames", 2, 16, 8, key="ex_frames"))
if gen.conditional:
    class_name = c4.selectbox("Class", gen.classes, key=f"ex_class_{ckey}")
else:
    class_name = explorer.sample_class(gen)
    c4.markdown(f"Class  \n**{class_name or 'none (trained without labels)'}**")
try:
    with st.spinner(sampling(frames)):
        images = strip(str(path), mtime, seed_a, seed_b, frames, class_name, steps, guidance)
except ValueError as e:
    st.error(str(e), icon=":material/error:")
    st.stop()
t = explorer.path_t(frames)
captions = [f"A · seed {seed_a}" if i == 0 else f"B · seed {seed_b}" if i == frames - 1 else f"t = {x:.2f}"
            for i, x in enumerate(t)]
draw_strip(images, captions)


# --- the same noise across classes -----------------------------------------------------------------------

st.subheader("Same noise across classes")
if not gen.conditional:
    who = f"trained on **{gen.class_name}** only" if gen.class_name else "trained on all classes without labels"
    st.info(f"This model is {who}, so there is no class label to change. Train a conditional model (the "
            f"*conditional* option on the GAN or Diffusion page) to see one noise drawn as every class.",
            icon=":material/info:")
else:
    st.caption("Each row is one noise, drawn as every class: the images differ only by the class label, so what "
               "changes along a row is what the model learned each class looks like.")
    c1, c2, _ = st.columns([1, 1, 2])
    sweep_seed = int(c1.number_input("Seed", 0, SEED_MAX, seed_a, key="ex_sweep_seed"))
    n_noise = int(c2.slider("Noises (rows)", 1, 4, 1, key="ex_sweep_n"))
    with st.spinner(sampling(n_noise * len(gen.classes))):
        rows = sweep(str(path), mtime, sweep_seed, n_noise, steps, guidance)
    for j in range(n_noise):   # core gives (class, noise); shown one noise per row, classes side by side
        draw_strip(rows[:, j], list(gen.classes))


# --- nearest real images ----------------------------------------------------------------------------------

def nearest_section() -> None:
    st.subheader("Nearest real images")
    st.caption("A sample beside its nearest **real training** images of the same class (synthetic and augmented "
               "rows never count as real), by distance in the domain encoder's features, the ones the Quality "
               "page's memorization audit uses. The ratio compares the distance with the class's median distance "
               "between two real images; the audit flags a possible copy far below 1.")
    c1, c2, c3 = st.columns([2, 2, 1])
    source = c1.radio("Sample", ["A frame of the interpolation", "A new sample"], key="ex_nn_source",
                      horizontal=True)
    if source == "A new sample":
        seed = int(c2.number_input("Seed", 0, SEED_MAX, 100, key="ex_nn_seed"))
        name = c2.selectbox("Class", gen.classes, key=f"ex_nn_class_{ckey}") if gen.conditional else class_name
        with st.spinner(sampling(1)):
            samples, chosen, tags = one_sample(str(path), mtime, seed, name, steps, guidance), 0, [f"seed {seed}"]
    else:
        chosen = int(c2.select_slider("Frame", list(range(frames)), value=frames // 2, key="ex_nn_frame",
                                      format_func=lambda i: captions[i])) if frames > 1 else 0
        samples, name, tags = images, class_name, captions
    k = int(c3.number_input("Nearest", 1, 8, 3, key="ex_nn_k"))

    from core.quality.evaluate import QualityConfig as Q
    from core.quality.features import domain_encoder, encoder_path

    if not encoder_path(ds.content_hash, Q.encoder_size, Q.encoder_epochs, Q.seed).is_file():
        prompt = st.empty()   # the offer goes once it is taken
        with prompt.container():
            st.info(f"The domain encoder of **{ds.name}** is not trained yet. It is a small CNN trained once per "
                    f"dataset on its real training split (a minute or so on a CPU) and cached; the Quality page's "
                    f"memorization audit uses the same one.", icon=":material/model_training:")
            if not st.button("Train it and search", key="ex_nn_train", icon=":material/search:"):
                return
        prompt.empty()
        bar = st.progress(0.0, text="Training the domain encoder…")
        try:
            domain_encoder(ds, Q.encoder_size, Q.encoder_epochs, Q.seed,
                           on_progress=lambda d, t, m: bar.progress(min(1.0, d / max(t, 1)), text=m))
        except ValueError as e:
            st.error(str(e), icon=":material/error:")
            return
        bar.empty()
    ui.cached_pixels(ds, gen.resolution)   # the real images at the generator's size (a progress bar the first time)
    try:
        ref = reference(ds, ds.content_hash, gen.resolution)
        found = neighbours(samples, tuple([name] * len(samples)), ds.content_hash, k, gen.classes, _ref=ref)
    except ValueError as e:
        st.error(str(e), icon=":material/error:")
        return
    shown = [j for j in range(k) if found.indices[chosen, j] >= 0]   # a class may have fewer than k real images
    draw_strip([samples[chosen], *found.images[chosen, shown]],
               [f"sample ({tags[chosen]}) · {name or 'no class'}",
                *[f"#{j + 1} {found.ids[chosen][j]} · d = {found.distances[chosen, j]:.3g} · "
                  f"{found.ratios[chosen, j]:.2f}× median" for j in shown]], slots=max(k + 1, 6))
    if len(shown) < k:
        st.caption(f"Only {len(shown)} real training image(s) of this class.")
    d, ratio, nearest_id = found.distances[chosen, 0], found.ratios[chosen, 0], found.ids[chosen][0]
    if found.flagged[chosen]:
        st.warning(f"**Possible copy.** Its nearest real training image, {nearest_id}, is at d = {d:.3g}, "
                   f"{ratio:.2f}× the class's median real-to-real distance: under the memorization audit's threshold "
                   f"of d = {found.threshold:.3g}. Compare the two images before using this generator's output.",
                   icon=":material/content_copy:")
    else:
        st.success(f"No near-copy. Its nearest real training image, {nearest_id}, is at d = {d:.3g}, {ratio:.2f}× "
                   f"the class's median real-to-real distance; the memorization audit flags below "
                   f"d = {found.threshold:.3g}.", icon=":material/verified_user:")
    if len(samples) > 1:
        st.dataframe({"frame": tags, "nearest real": [row[0] for row in found.ids],
                      "distance": found.distances[:, 0].round(4), "× median": found.ratios[:, 0].round(3),
                      "possible copy": found.flagged}, hide_index=True, key="ex_nn_table")
    st.caption(f"Features: {found.extractor}. Real images compared at {gen.resolution} px.")


nearest_section()
