#!/usr/bin/env python3
"""A study preset's wall time on 1 and 8 workers (GPUs, or CPU slots), projected from rates measured
here with the study's own trainers: an ESTIMATE (core.study.estimate says what it leaves out).

Measured on --device, at the preset's settings: each network's training images/s (the trainer's
step at the preset's batch and image size) and evaluation images/s; each generator's seconds per
training step (fidelity checks off; with --batch B measured at batch B and scaled linearly to the
preset's batch) and its sampling rate (the diffusion model: the preset's DDIM steps and guidance; on a CPU
timed at 5 steps and scaled linearly). Sizes: the dataset's splits (default the built-in phantom), and VinDr-SpineXR's
(8,389 training images split 7:1 into train and validation, 2,077 test) with the dataset's class
proportions; both are printed. Then core.study.estimate replays the Ray executor's schedule.

    python bench/study_estimate.py --device cuda                  # the paper preset on this GPU
    python bench/study_estimate.py --device cuda --vindr          # last line at VinDr-SpineXR's size
    python bench/study_estimate.py --preset paper --batch 8       # a CPU: minutes, not hours
    python bench/study_estimate.py --preset quick --sets real --check-wall 41   # against a measured run
Last line: ``study_estimate: seconds=<wall on 8 workers> one_worker=<wall on 1> (an estimate)``.
"""
import argparse
import dataclasses
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
print = functools.partial(print, flush=True)   # progress shows while a long run goes on
VINDR = {"train": 8389 - round(8389 * 0.125), "val": round(8389 * 0.125), "test": 2077}   # val_fraction 0.125


class CountsOnly:
    """What core.study.sets.gan_config reads of the splits."""

    def __init__(self, counts):
        self.counts = counts

    def train_counts(self):
        return dict(self.counts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper", help="quick, standard or paper (default)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--sets", default=None, help="comma-separated: only these sets of the preset (real is always in)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="these seeds instead of the preset's")
    p.add_argument("--data", default=None, help="dataset folder for the split sizes (default: the built-in phantom)")
    p.add_argument("--vindr", action="store_true", help="the last line at VinDr-SpineXR's split sizes (with the "
                                                        "dataset's class proportions; both are printed)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per network and generator, after as many "
                                                           "untimed ones (default 2 on a CPU, 20 on a GPU)")
    p.add_argument("--batch", type=int, default=None, help="measure at this batch (default: the preset's; 8 keeps "
                                                            "the paper preset's CPU run to minutes); a generator's "
                                                            "s/step is scaled linearly to the preset's batch, images/s "
                                                            "are used as they are")
    p.add_argument("--rates", default=None, help="JSON of rates measured before (from --save-rates): only what it "
                                                 "lacks is measured")
    p.add_argument("--save-rates", default=None, help="write the rates (measured and read) to this JSON file")
    p.add_argument("--workers", default="1,2,8", help="worker counts to project (default 1,2,8)")
    p.add_argument("--check-wall", type=float, default=None, help="a measured wall time (s) of this preset on "
                                                                  "the worker count given by --check-workers")
    p.add_argument("--check-workers", type=int, default=1)
    a = p.parse_args()

    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from core.classify.train import ClassifierTrainer, batches, epoch_indices
    from core.device import machine_line
    from core.study.estimate import Rates, Sizes, duration_text, projection
    from core.study.grid import DIFFUSION, preset
    from core.study.run import classifier_config
    from core.study.sets import gan_config

    print(machine_line(a.device))
    gpu = a.device.startswith("cuda")
    n = a.steps or (20 if gpu else 2)
    config = dataclasses.replace(preset(a.preset), device=a.device)
    if a.sets:
        config = dataclasses.replace(config, sets=("real", *[k for k in a.sets.split(",") if k != "real"]))
    if a.seeds:
        config = dataclasses.replace(config, seeds=tuple(a.seeds))
    workers = tuple(int(w) for w in a.workers.split(","))

    def sync():
        if gpu:
            torch.cuda.synchronize()

    # --- sizes ------------------------------------------------------------------------------------
    from core.data.datasets import ensure_default_dataset, load_dataset

    ds = load_dataset(a.data) if a.data else ensure_default_dataset()
    counts = ds.class_counts("train")
    sizes = Sizes(counts, sum(ds.class_counts("val").values()), sum(ds.class_counts("test").values()))
    what = f"dataset {ds.name}"
    vindr = sizes.scaled(VINDR["train"], VINDR["val"], VINDR["test"])
    vindr_what = f"VinDr-SpineXR's sizes, {ds.name}'s class proportions"
    print(f"preset {a.preset}: {what}: {sizes.n_train} train ({', '.join(f'{c} {k}' for c, k in sizes.train_counts.items())}), "
          f"{sizes.n_val} val, {sizes.n_test} test; timing {n} steps after {n} untimed")

    # --- classifiers ------------------------------------------------------------------------------
    known = json.loads(Path(a.rates).read_text()) if a.rates else {}
    if known and known.get("preset") != a.preset or known and known.get("device") != a.device:
        raise SystemExit(f"{a.rates}: rates of preset {known.get('preset')} on {known.get('device')}, not "
                         f"{a.preset} on {a.device}")
    rng = np.random.default_rng(0)
    k = len(counts)
    train_rate, eval_rate = dict(known.get("train_img_s", {})), dict(known.get("eval_img_s", {}))
    step_s, sample_rate = dict(known.get("gen_step_s", {})), dict(known.get("sample_img_s", {}))

    def save() -> None:   # after each measurement: a long run stopped half-way keeps what it measured
        if a.save_rates:
            Path(a.save_rates).write_text(json.dumps({"preset": a.preset, "device": a.device,
                                                      "train_img_s": train_rate, "eval_img_s": eval_rate,
                                                      "gen_step_s": step_s, "sample_img_s": sample_rate}, indent=1))
    for net in config.networks:
        from core.study.grid import Cell

        if net in train_rate and net in eval_rate:
            print(f"  {net}: train {train_rate[net]:.3g} img/s, eval {eval_rate[net]:.3g} img/s (from {a.rates})")
            continue
        cfg = classifier_config(config, Cell("real", net, 0), epochs=1000)
        cfg = dataclasses.replace(cfg, batch_size=a.batch or cfg.batch_size)
        size = cfg.image_size
        m_img = max(2 * n * cfg.batch_size, 64)
        images = rng.integers(0, 256, (m_img, size, size), dtype=np.uint8)
        labels = rng.integers(0, k, m_img)
        t = ClassifierTrainer(cfg, (images, labels), (images[:8], labels[:8]), [f"c{i}" for i in range(k)])
        t.net.train()
        queue = [b for b in batches(epoch_indices(t.n_train, t.train_y, 1, t.config).to(t.device), cfg.batch_size)
                 if len(b) == cfg.batch_size]
        for _ in range(n):
            t.train_step(queue.pop(0))
        t.read_sums()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            t.train_step(queue.pop(0))
        t.read_sums()
        sync()
        train_rate[net] = n * cfg.batch_size / (time.perf_counter() - t0)
        x = torch.from_numpy(images[:max(64, cfg.eval_batch_size)])[:, None]
        t.predict(x)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            t.predict(x)
            sync()
            times.append(time.perf_counter() - t0)
        eval_rate[net] = len(x) / min(times)
        print(f"  {net} at {size} px ({'bf16' if t.bf16 else 'fp32'}), batch {cfg.batch_size}: "
              f"train {train_rate[net]:.3g} img/s, eval {eval_rate[net]:.3g} img/s")
        save()
        del t

    # --- generators -------------------------------------------------------------------------------
    variants = config.gan_variants()
    present = CountsOnly(counts)
    for v in variants:
        from core.generators import generate_images

        if v in step_s and v in sample_rate:
            print(f"  generator {v}: {step_s[v]:.4g} s/step, sampling {sample_rate[v]:.3g} img/s (from {a.rates})")
            continue
        full = gan_config(config, v, present, max(sizes.n_train, 64))
        batch = a.batch or full.batch
        common = dict(max_steps=2 * n, max_seconds=None, fidelity_every=None, fidelity_patience=None, log_every=n,
                      batch=batch, grid_size=len(full.classes))   # one grid image a class: the grid is not timed
        if v == DIFFUSION:
            gcfg = dataclasses.replace(full, grid_every=2 * n, **common)
        else:
            from core.gan.train import train_gan as train

            gcfg = dataclasses.replace(full, steps_per_epoch=2 * n, epochs=None, **common)
        res = gcfg.resolution
        m_img = max(gcfg.batch * 2, 64)
        images = rng.integers(0, 256, (m_img, res, res), dtype=np.uint8)
        labels = rng.integers(0, len(gcfg.classes), m_img)
        if v == DIFFUSION:   # the trainer's step and the DDIM sampler, timed directly (a grid costs minutes on a CPU)
            from core.diffusion.ddim import ddim_sample
            from core.diffusion.train import DiffusionTrainer

            trainer = DiffusionTrainer(images, labels, gcfg)
            for _ in range(n):
                trainer.train_step()
            trainer.read_stats()
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                trainer.train_step()
            trainer.read_stats()
            sync()
            step_s[v] = (time.perf_counter() - t0) / n * full.batch / batch   # linear in the batch
            k_img = 64 if gpu else 2
            steps = config.diffusion_sample_steps if gpu else 5   # on a CPU: 5 steps, scaled (linear in the steps)
            noise = torch.randn(k_img, 1, res, res, generator=torch.Generator().manual_seed(1))
            ys = torch.arange(k_img) % len(gcfg.classes)
            dev = trainer.device
            ddim_sample(trainer.ema, gcfg, noise, ys, 2, config.diffusion_guidance, dev, trainer.bf16)   # warm
            sync()
            t0 = time.perf_counter()
            ddim_sample(trainer.ema, gcfg, noise, ys, steps, config.diffusion_guidance, dev, trainer.bf16).cpu()
            sample_rate[v] = k_img / ((time.perf_counter() - t0) * config.diffusion_sample_steps / steps)
            del trainer
        else:
            stamps = {}
            with tempfile.TemporaryDirectory() as out:
                r = train(images, labels, gcfg, out,
                          on_step=lambda step, metrics: stamps.setdefault(step, time.perf_counter()))
                if r.state != "finished" or n not in stamps or 2 * n not in stamps:
                    raise SystemExit(f"{v}: the timing run did not finish ({r.state}: {r.message})")
                step_s[v] = (stamps[2 * n] - stamps[n]) / n * full.batch / batch   # linear in the batch
                generate_images(r.checkpoint, 2, gcfg.classes[0], device=a.device)   # warm
                t0 = time.perf_counter()
                generate_images(r.checkpoint, 64, gcfg.classes[0], device=a.device)
                sync()
                sample_rate[v] = 64 / (time.perf_counter() - t0)
        print(f"  generator {v} at {res} px, width {gcfg.width}, measured at batch {batch}: {step_s[v]:.4g} s/step "
              f"at batch {full.batch}, sampling {sample_rate[v]:.3g} img/s")
        save()

    rates = Rates(a.device, train_rate, eval_rate, step_s, sample_rate)
    print("an estimate: every epoch counted (early stopping ends cells sooner); no GAN fidelity checks, data "
          "loading or MLflow traffic; workers are independent devices (CPU slots on one machine share its cores)")
    walls = {}
    for label, s in (("dataset", sizes), ("vindr", vindr)):
        est = projection(config, s, rates, workers)
        walls[label] = est["wall_s"]
        by_kind: dict[str, list[float]] = {}
        for task in est["tasks"]:
            name = " · ".join(task.name.split("|")[:2]) if task.name.startswith("cell") else task.name
            by_kind.setdefault(name, []).append(task.seconds)
        print(f"{what if label == 'dataset' else vindr_what}: {est['n_generators']} generators, {est['n_cells']} cells "
              f"({s.n_train} train, {s.n_val} val, {s.n_test} test); seconds per task:")
        for name, secs in by_kind.items():
            print(f"  {name:<34} {len(secs):3d} x {statistics.median(secs):9.0f} s ({duration_text(statistics.median(secs))})")
        print(f"  sum of all tasks {duration_text(est['total_s'])}; critical path (longest generator + a cell after "
              f"it) {duration_text(est['critical_path_s'])}")
        for w, sec in est["wall_s"].items():
            print(f"  {w} worker{'s' if w > 1 else ' '}: {duration_text(sec):>10} ({sec:9.0f} s, speed-up "
                  f"{est['wall_s'][workers[0]] / sec:.2f}x)")
        if a.check_wall and label == "dataset":
            got = projection(config, s, rates, (a.check_workers,))["wall_s"][a.check_workers]
            print(f"  check: measured {a.check_wall:.0f} s on {a.check_workers} worker(s); estimated {got:.0f} s "
                  f"({got / a.check_wall:.2f}x the measured)")
    last, chosen = max(workers), walls["vindr" if a.vindr else "dataset"]
    print(f"study_estimate: seconds={chosen[last]:.0f} one_worker={chosen[min(workers)]:.0f} workers={last} "
          f"sizes={'vindr' if a.vindr else 'dataset'} (an estimate)")


if __name__ == "__main__":
    main()
