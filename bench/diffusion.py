#!/usr/bin/env python3
"""Diffusion speed at 64 px: training img/s and DDIM sampling img/s of the project's path against a
plain reference loop written the straightforward way, same MONAI UNet, same data, same batch, in the
same process and the same run.

The project's path: :meth:`core.diffusion.train.DiffusionTrainer.train_step` (uint8 data on the device,
batches gathered by index, bf16 autocast where ``--precision`` gives it, fused AdamW on a GPU, the
loss summed on the device and read every ``log_every`` steps, EMA by one ``_foreach_lerp_``) and
:func:`core.diffusion.ddim.ddim_sample` (classifier-free guidance as ONE forward pass of 2B images).

The reference: the same UNet (:func:`core.diffusion.models.build_unet`, same seed, so the same
weights), fp32, eager; the training set as a float tensor in [-1, 1] indexed per step (no
DataLoader); MONAI's ``DDPMScheduler`` for the noise and the v target; ``AdamW`` with its default
implementation; ``loss.item()`` every step; EMA as a loop over the parameters; and sampling as MONAI's
``DDIMScheduler`` loop with TWO separate forward passes per step (with the class, then "no class").
Both train the same class-conditional model (4 classes, condition dropout 0.15) and sample with the
same guidance scale and DDIM steps from the same noise.

The contenders take turns (reference, ours, reference, ...) so a machine shared with other work slows
each alike; each turn ends with a host sync. Figures: median img/s per contender and the median over
rounds of ours / reference in the same round, for training and for sampling. The ratio line takes the
smaller of the two (both halves must meet the target).

    python bench/diffusion.py                                 # CPU: width 16, batch 8 (minutes)
    python bench/diffusion.py --precision fp32                # CPU without native bf16: fp32 forced
    python bench/diffusion.py --device cuda                   # GPU: width 32, batch 64
On a CPU shared with other work, ``--threads 1`` gives steadier rounds (2 threads on 2 busy cores
swung 20x between turns here; 1 thread stayed within 15%).
Last line: ``diffusion: ratio=<min of training and sampling> target=1.5`` (the target applies to GPUs).
"""
import argparse
import copy
import functools
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.5          # on a GPU; on a CPU the ratio is printed as measured
RESOLUTION = 64
N_CLASSES = 4
print = functools.partial(print, flush=True)   # progress shows while a long run goes on


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--batch", type=int, default=None, help="images per training step and per sampling batch "
                                                           "(default 8 on CPU, 64 on GPU)")
    p.add_argument("--steps", type=int, default=None, help="training steps per turn (default 2 on CPU, 20 on GPU)")
    p.add_argument("--repeats", type=int, default=None, help="rounds of turns (default 3 on CPU, 5 on GPU)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="ours: auto (the product default: bf16 autocast on GPUs and CPUs with native bf16, "
                        "else fp32), fp32 or bf16; the reference is always fp32")
    p.add_argument("--width", type=int, default=None, help="UNet base channels (default 16 on CPU, 32 on GPU)")
    p.add_argument("--sample-steps", dest="sample_steps", type=int, default=None,
                   help="DDIM steps per sampling turn (default 5 on CPU, 25 on GPU)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps and samplings per contender first")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: torch's)")
    a = p.parse_args()

    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F
    from monai.networks.schedulers.ddim import DDIMScheduler
    from monai.networks.schedulers.ddpm import DDPMScheduler

    from core.device import machine_line, resolve_device
    from core.diffusion.ddim import ddim_sample
    from core.diffusion.models import build_unet
    from core.diffusion.train import DiffusionConfig, DiffusionTrainer

    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    gpu = device.type == "cuda"
    batch = a.batch or (64 if gpu else 8)
    steps = a.steps or (20 if gpu else 2)
    repeats = a.repeats or (5 if gpu else 3)
    width = a.width or (32 if gpu else 16)
    sample_steps = a.sample_steps or (25 if gpu else 5)
    if min(batch, steps, repeats, sample_steps) < 1:
        raise SystemExit("--batch, --steps, --repeats and --sample-steps must be at least 1.")
    if repeats < 3:
        print(f"note: --repeats {repeats}: a median of fewer than 3 rounds is little better than one time")

    def sync():
        if gpu:
            torch.cuda.synchronize(device)

    load0 = os.getloadavg()[0]
    print(f"{machine_line(device)}; device {device}")
    print(f"DDPM {RESOLUTION} px, UNet width {width}, {N_CLASSES} classes (conditional), batch {batch}; training: "
          f"{repeats} rounds of {steps}-step turns; sampling: {repeats} rounds of one DDIM batch of {batch} images, "
          f"{sample_steps} steps, guidance {a.guidance:g}; {a.warmup} warm-up turns each; load average {load0:.1f}")

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (512, RESOLUTION, RESOLUTION), dtype=torch.uint8, generator=gen)
    labels = torch.arange(512) % N_CLASSES
    classes = tuple(f"c{i}" for i in range(N_CLASSES))
    cfg = DiffusionConfig(resolution=RESOLUTION, batch=batch, max_steps=10**7, width=width, conditional=True,
                          classes=classes, device=str(device), precision=a.precision, sample_steps=sample_steps,
                          guidance=a.guidance, seed=0)

    # --- ours: the trainer and the sampler the product runs --------------------------------
    ours = DiffusionTrainer(images.numpy(), labels.numpy(), cfg)   # seeds torch with cfg.seed, then builds

    def our_train(n: int) -> None:
        for _ in range(n):
            ours.train_step()
            if ours._loss_steps >= cfg.log_every:   # the product's periodic read
                ours.read_stats()
        ours.read_stats()                           # the turn's final sync

    # --- the reference: written the straightforward way ------------------------------------
    torch.manual_seed(cfg.seed)   # the same initial weights as ours
    ref_model = build_unet(RESOLUTION, width, N_CLASSES, cfg.attention).to(device)
    ref_ema = copy.deepcopy(ref_model)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ref_sched = DDPMScheduler(cfg.timesteps, schedule=cfg.schedule, prediction_type=cfg.prediction, clip_sample=True)
    ref_data = (images[:, None].float() / 127.5 - 1.0).to(device)   # float (N, 1, R, R) in [-1, 1]
    ref_labels = labels.to(device)
    ref_step_count = [0]

    def ref_train(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(0, len(ref_data), (batch,), device=device)
            x0 = ref_data[idx]
            y = ref_labels[idx].clone()
            y[torch.rand(batch, device=device) < cfg.cond_drop] = N_CLASSES   # the "no class" token
            noise = torch.randn_like(x0)
            t = torch.randint(0, cfg.timesteps, (batch,), device=device)
            x_t = ref_sched.add_noise(x0, noise, t)
            target = ref_sched.get_velocity(x0, noise, t)
            loss = F.mse_loss(ref_model(x_t, t, class_labels=y), target)
            ref_opt.zero_grad()
            loss.backward()
            ref_opt.step()
            ref_step_count[0] += 1
            decay = min(cfg.ema_decay, (1 + ref_step_count[0]) / (10 + ref_step_count[0]))
            with torch.no_grad():
                for pe, p_ in zip(ref_ema.parameters(), ref_model.parameters()):
                    pe.mul_(decay).add_(p_, alpha=1 - decay)
            loss.item()

    noise = torch.randn(batch, 1, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    sample_labels = torch.arange(batch) % N_CLASSES

    def ref_sample() -> None:
        s = DDIMScheduler(cfg.timesteps, schedule=cfg.schedule, prediction_type=cfg.prediction, clip_sample=True)
        s.set_timesteps(sample_steps, device=device)
        x = noise.to(device)
        y = sample_labels.to(device)
        y_none = torch.full_like(y, N_CLASSES)
        with torch.no_grad():
            for t in s.timesteps:
                tt = torch.full((batch,), int(t), device=device, dtype=torch.long)
                cond = ref_ema(x, tt, class_labels=y)
                uncond = ref_ema(x, tt, class_labels=y_none)
                x, _ = s.step(uncond + a.guidance * (cond - uncond), int(t), x)
        x.clamp(-1, 1).cpu()

    def our_sample() -> None:
        ddim_sample(ours.ema, cfg, noise, sample_labels, sample_steps, a.guidance, device, ours.bf16).cpu()

    # --- turns -------------------------------------------------------------------------------
    for _ in range(a.warmup):
        ref_train(1)
        our_train(1)
    ref_sample()
    our_sample()
    sync()

    rates = {("train", "reference"): [], ("train", "ours"): [], ("sample", "reference"): [], ("sample", "ours"): []}
    turns = {("train", "reference"): lambda: ref_train(steps), ("train", "ours"): lambda: our_train(steps),
             ("sample", "reference"): ref_sample, ("sample", "ours"): our_sample}
    done = {"train": steps * batch, "sample": batch}
    for r in range(repeats):
        for (what, who), turn in turns.items():
            t0 = time.perf_counter()
            turn()
            sync()
            rates[(what, who)].append(done[what] / (time.perf_counter() - t0))
        print(f"  round {r + 1}/{repeats}: " + " | ".join(f"{what} {who} {v[-1]:7.2f}" for (what, who), v in
                                                          rates.items()) + "  img/s")

    ratios = {}
    mode = "bf16 autocast" if ours.bf16 else "fp32"
    print(f"ours: precision {a.precision} -> {mode}{', fused AdamW' if gpu else ''}; reference: fp32 eager")
    for what, name in (("train", "training"), ("sample", "DDIM sampling")):
        ref, our = rates[(what, "reference")], rates[(what, "ours")]
        paired = [o / b for o, b in zip(our, ref)]
        ratios[what] = statistics.median(paired)
        print(f"{name:<14} reference {statistics.median(ref):8.2f} img/s   ours {statistics.median(our):8.2f} img/s   "
              f"median paired ratio {ratios[what]:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in paired)})")
    ratio = min(ratios.values())
    print(f"load average at end {os.getloadavg()[0]:.1f}; ratio = the smaller of training and sampling")
    if ratio < 1.0:
        print(f"the project's path is SLOWER than the reference here ({ratio:.2f}x) on {device}.")
    elif ratio < 1.1:
        print(f"the project's path is NOT faster than the reference here ({ratio:.2f}x, within noise) on {device}.")
    if not gpu:
        print(f"the target {TARGET}x applies to GPUs; on this CPU the measured ratio is printed as it is.")
    print(f"diffusion: ratio={ratio:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
