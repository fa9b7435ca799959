#!/usr/bin/env python3
"""Classifier training speed: the trainer's step (core.classify.train.ClassifierTrainer) against a
plain fp32 eager loop with a torch DataLoader, same network, same data, same batch size, in the
same process and the same run.

The baseline is the textbook loop: a Dataset that turns one uint8 image into a normalised float
tensor per item, ``DataLoader(shuffle=True, num_workers=0)``, the network in the default
(contiguous) layout, ``AdamW`` with its default implementation, and ``loss.item()`` every step.
Ours: the training set on the device as uint8, batches gathered by index, channels_last,
fused AdamW, losses summed on the device and read once per burst, and on a CPU in fp32 the
convolutions with at most 4 output positions as im2col + matrix product (GemmConv2d: ResNet-18's
last stage at 64 px; torch.compile was measured and not kept: no faster here); ``auto`` precision is the
product default (bf16 autocast on GPUs; on CPUs only where CPU_BF16_AUTO says it was faster),
``bf16`` forces bf16 autocast (a default mode only where the CPU has native bf16). The first
line names the machine (core.device.machine_line).

The contenders take turns in bursts of steps (baseline, ours[mode]..., baseline, ...), so a
machine shared with other work slows each alike; every burst ends with a host sync. Figures:
median images/s per contender, and the median over rounds of ours / baseline in the same round.

    python bench/classify.py                                  # CPU: small_cnn and resnet18 at 64 px
    python bench/classify.py --device cuda                    # GPU: + vgg16 at 224 px
Last line: ``classify: ratio=<min over models of the last mode> target=1.3`` (2.0 on a GPU).
"""
import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
print = functools.partial(print, flush=True)   # progress shows while a long run goes on


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--models", default=None, help="comma-separated (default small_cnn:64,resnet18:64; "
                                                  "GPU: + vgg16:224); MODEL:SIZE")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=256, help="training images in memory")
    p.add_argument("--modes", default=None, help="ours, comma-separated: auto, fp32, bf16 (default fp32,bf16,auto "
                                                 "on CPU; fp32,auto on GPU); the ratio line uses the last")
    p.add_argument("--burst", type=int, default=None, help="steps per turn (default 4 on CPU, 30 on GPU)")
    p.add_argument("--rounds", type=int, default=5, help="turns per contender")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: torch's)")
    a = p.parse_args()

    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    import torch.nn.functional as F

    from core.classify.models import build_model
    from core.classify.train import ClassifierConfig, ClassifierTrainer, batches, epoch_indices
    from core.device import machine_line, native_bf16

    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine_line(a.device))
    gpu = a.device.startswith("cuda")
    target = 2.0 if gpu else 1.3
    models = a.models or ("small_cnn:64,resnet18:64,vgg16:224" if gpu else "small_cnn:64,resnet18:64")
    # bf16 autocast only where the CPU has it natively (on an AVX2-only CPU it runs ~20x slower than fp32)
    modes = (a.modes or ("fp32,auto" if gpu or not native_bf16(torch.device("cpu")) else "fp32,bf16,auto")).split(",")
    burst = a.burst or (30 if gpu else 4)
    device = torch.device(a.device)

    def sync():
        if gpu:
            torch.cuda.synchronize(device)

    print(f"device {a.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, "
          f"{a.images} images in memory, burst {burst} steps, {a.rounds} rounds")

    def bench_model(name: str, size: int) -> float:
        """Baseline and ours on one network; returns the median ratio of the last mode."""
        rng = np.random.default_rng(0)
        k = 4
        images = rng.integers(0, 256, (a.images, size, size), dtype=np.uint8)
        labels = rng.integers(0, k, a.images)
        classes = [f"c{i}" for i in range(k)]

        # --- the baseline: Dataset + DataLoader, fp32 eager, .item() every step ----------
        class Images(torch.utils.data.Dataset):
            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                x = torch.from_numpy(images[i]).float().div(255.0).sub(0.5).div(0.25)[None]
                return x, int(labels[i])

        torch.manual_seed(0)
        base_model = build_model(name, k).to(device)
        base_model.train()
        base_opt = torch.optim.AdamW(base_model.parameters(), lr=1e-3, weight_decay=1e-4)
        loader = torch.utils.data.DataLoader(Images(), batch_size=a.batch, shuffle=True, num_workers=0,
                                             drop_last=True, pin_memory=gpu)
        base_iter = iter(loader)

        def base_step():
            nonlocal base_iter
            try:
                x, y = next(base_iter)
            except StopIteration:
                base_iter = iter(loader)
                x, y = next(base_iter)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = base_model(x)
            logits, aux = (out[0], [o for o in out[1:] if o is not None]) if isinstance(out, tuple) else (out, [])
            loss = F.cross_entropy(logits, y) + sum(0.4 * F.cross_entropy(o, y) for o in aux)
            base_opt.zero_grad()
            loss.backward()
            base_opt.step()
            return loss.item()

        # --- ours: one trainer per precision mode ------------------------------------------
        trainers = {}
        for mode in modes:
            cfg = ClassifierConfig(model=name, image_size=size, batch_size=a.batch, device=a.device, precision=mode,
                                   epochs=1000)
            t = ClassifierTrainer(cfg, (images, labels), (images[:8], labels[:8]), classes)
            t.net.train()
            trainers[mode] = (t, [], 0)

        def our_steps(mode, n):
            t, queue, epoch = trainers[mode]
            for _ in range(n):
                if not queue:
                    epoch += 1
                    queue.extend(batches(epoch_indices(t.n_train, t.train_y, epoch, t.config).to(t.device), a.batch))
                    queue[:] = [b for b in queue if len(b) == a.batch]
                t.train_step(queue.pop(0))
            trainers[mode] = (t, queue, epoch)
            t.read_sums()   # the host sync the trainer does once per epoch

        for _ in range(a.warmup):
            base_step()
        for mode in modes:
            our_steps(mode, a.warmup)
        sync()
        rates = {"baseline": [], **{m: [] for m in modes}}
        ratios = {m: [] for m in modes}
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            for _ in range(burst):
                base_step()
            sync()
            base_rate = burst * a.batch / (time.perf_counter() - t0)
            rates["baseline"].append(base_rate)
            for mode in modes:
                t0 = time.perf_counter()
                our_steps(mode, burst)
                sync()
                r = burst * a.batch / (time.perf_counter() - t0)
                rates[mode].append(r)
                ratios[mode].append(r / base_rate)
        print(f"{name} @ {size} px:")
        print(f"  baseline (DataLoader, fp32 eager)   {statistics.median(rates['baseline']):8.1f} img/s")
        for mode in modes:
            t = trainers[mode][0]
            print(f"  ours {mode:<5} (ran {'bf16' if t.bf16 else 'fp32'})               "
                  f"{statistics.median(rates[mode]):8.1f} img/s   ratio {statistics.median(ratios[mode]):.2f}x "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios[mode])})")
            for note in t.notes:
                print(f"    {mode}: {note}")
        return statistics.median(ratios[modes[-1]])

    ratios_last = [bench_model(spec.split(":")[0], int(spec.split(":")[1])) for spec in models.split(",")]
    print(f"classify: ratio={min(ratios_last):.2f} target={target}")


if __name__ == "__main__":
    main()
