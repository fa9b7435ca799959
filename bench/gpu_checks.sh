#!/usr/bin/env bash
# core.gan on a GPU, in one go (about 3-4 minutes on one H100/H200), needing only torch and
# torchvision: no pandas, mlflow, streamlit or scipy on the GPU box.
#   1. smoke: every variant trains on the GPU, eagerly and as a CUDA graph (conditional + DiffAugment
#      for DCGAN), with finite losses, a checkpoint, a resume, and the graph really in use;
#   2. speed: bench/gan.py at batch 64 and 256, in-process turns: the reference fp32 step vs ours in fp32,
#      eager bf16 and CUDA-graphed bf16 (the last line of each is the graph ratio);
#   3. diffusion speed (needs monai): bench/diffusion.py, training and DDIM sampling at 64 px against a plain
#      fp32 loop with the same UNet (under a minute);
#   4. classifier speed: bench/classify.py --device cuda (small CNN, ResNet-18 and VGG16 at 224 px, target 2x);
#   5. with the project's full requirements installed (pandas, mlflow, scipy: skipped on a torch-only box):
#      the `standard` study preset end to end on the GPU; the `paper` preset's real-only cells (VGG16 and
#      Inception-v3 at 224 px, 30 epochs) timed and set against bench/study_estimate.py's estimate of them;
#      then the whole paper preset's wall time on 1 and 8 GPUs from the rates measured here (an estimate:
#      core.study.estimate replays the Ray executor's schedule).
# Usage: bash bench/gpu_checks.sh        (PYTHON=... picks the interpreter; REFERENCE=... the path of
#        reference_dcgan.py when it is not in ../shared/bench/ or ./shared/bench/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
start=$(date +%s)

$PY - <<'EOF'
import sys, tempfile, time
import numpy as np, torch
for banned in ("pandas", "mlflow", "streamlit", "scipy"):
    sys.modules[banned] = None          # prove the GPU path needs none of them
sys.path.insert(0, ".")
from core.gan.train import GanConfig, train_gan
from core.gan.sample import generate_images

print("torch", torch.__version__, "| GPU", torch.cuda.get_device_name(0), flush=True)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[:64, :64]
images = np.zeros((256, 64, 64), np.uint8)
for im in images:                        # bright discs: something learnable
    cy, cx, r = rng.integers(12, 52, 2).tolist() + [int(rng.integers(4, 12))]
    im[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 220
labels = np.arange(256) % 3
failures = []
for variant in ("dcgan", "wgan", "wgan-gp"):
    for graph in (False, True):
        extra = dict(conditional=True, classes=("a", "b", "c"), diffaug=True) if variant == "dcgan" else {}
        cfg = GanConfig(variant=variant, resolution=64, batch=64, width=32, max_steps=40, steps_per_epoch=20,
                        device="cuda", cuda_graph=graph, log_every=10, class_name=None if extra else "x", **extra)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            r = train_gan(images, labels, cfg, out)
            more = train_gan(images, labels, GanConfig.from_dict({**cfg.to_dict(), "max_steps": 50}), out, resume=True)
            imgs = generate_images(r.checkpoint, 8, device="cuda").images
            ok = (r.state == "finished" and more.step == 50 and r.cuda_graph == graph
                  and all(np.isfinite(v) for v in r.metrics.values()) and imgs.shape == (8, 64, 64))
            print(f"  {'ok  ' if ok else 'FAIL'} {variant:<8} graph={graph!s:<5} steps {r.step}+{more.step - r.step} "
                  f"{r.img_per_s:8.1f} img/s  {time.perf_counter() - t:5.1f} s  "
                  + " ".join(f"{k}={v:.3g}" for k, v in r.metrics.items() if k != "img_per_s")
                  + "".join(f"\n       note: {n}" for n in r.notes + more.notes), flush=True)
            if not ok:
                failures.append(f"{variant} graph={graph}")
print("gpu smoke:", "all ok" if not failures else f"FAILED {failures}", flush=True)
EOF

REF=${REFERENCE:+--reference $REFERENCE}
$PY bench/gan.py --device cuda --batch 64 --rounds 7 --burst 50 $REF
$PY bench/gan.py --device cuda --batch 256 --rounds 7 --burst 30 $REF
$PY bench/diffusion.py --device cuda --batch 64 --steps 20 --repeats 5 || echo "diffusion bench: skipped or failed (needs monai)"
$PY bench/classify.py --device cuda

if $PY -c "import pandas, mlflow, scipy, streamlit" 2>/dev/null; then
  work=$(mktemp -d)
  export MEDAUG_HOME=$work/ws MLFLOW_TRACKING_URI=sqlite:///$work/mlflow.db
  t=$(date +%s)
  $PY -m core study --preset standard --device cuda --out "$work/standard" | tail -1
  echo "standard study on the GPU: $(( $(date +%s) - t )) s"
  t=$(date +%s)
  $PY -m core study --preset paper --sets real --seeds 0 --device cuda --out "$work/paper-real" | tail -1
  real_cells=$(( $(date +%s) - t ))
  echo "paper preset, real-only cells (VGG16 and Inception-v3, 30 epochs, one after the other): ${real_cells} s"
  # the rates on this GPU, the estimate of those two cells against their measured time, then the whole preset
  # (every generator measured too) on 1 and 8 GPUs at the phantom's and at VinDr-SpineXR's size: an estimate
  $PY bench/study_estimate.py --preset paper --device cuda --sets real --seeds 0 --check-wall "$real_cells" \
      --save-rates "$work/rates.json" | grep -E "img/s|check:"
  $PY bench/study_estimate.py --preset paper --device cuda --rates "$work/rates.json" --vindr
  rm -rf "$work"
else
  echo "study presets: skipped (this machine lacks the project's requirements; pip install -r requirements.txt)"
fi
echo "gpu_checks: $(( $(date +%s) - start )) s"
