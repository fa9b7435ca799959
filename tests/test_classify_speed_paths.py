"""The classifier trainer's CPU fp32 speed path (core.classify.train.GemmConv2d): convolutions with at
most GEMM_CONV_MAX_POSITIONS output positions per image train as im2col + one matrix product.

Pinned here: the same values and gradients as F.conv2d; from the same seed and weights, the same
network gradients as the plain (oneDNN) path and the same losses over 4 steps (float32 summation
order differs: within 1e-4);
a resumed run equals an uninterrupted one bit for bit on this path; the path is named in the
notes; eval mode, bf16 and the saved model are the ordinary Conv2d."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.classify import train as T
from core.classify.models import build_model
from core.classify.train import ClassifierConfig, ClassifierTrainer, GemmConv2d, gemm_conv2d, train_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny tensors (tests/conftest.py)

LOSS_TOL = 1e-4   # relative, per step: float32 sums in another order, nothing else


def splits(size=16, seed=0):
    rng = np.random.default_rng(seed)

    def split(n):
        return rng.integers(0, 256, (n, size, size), dtype=np.uint8), np.arange(n) % 2
    return split(24), split(8), split(10)


def cfg(**kw) -> ClassifierConfig:
    base = {"image_size": 16, "epochs": 3, "batch_size": 8, "device": "cpu", "patience": None, "n_boot": 20,
            "precision": "fp32"}
    return ClassifierConfig(**{**base, **kw})


@pytest.mark.parametrize("cin,cout,hw,k,stride,pad,bias", [
    (8, 16, 2, 3, 1, 1, False),    # ResNet-18's last stage at 64 px, in small
    (8, 16, 4, 3, 2, 1, False),    # its downsampling conv
    (8, 16, 4, 1, 2, 0, True),     # the 1x1 shortcut, with a bias
    (1, 4, 5, 3, 1, 1, False),     # a grey input, odd size
])
def test_gemm_conv2d_equals_conv2d_values_and_gradients(cin, cout, hw, k, stride, pad, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, cin, hw, hw, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(cout, cin, k, k, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(cout, generator=g).requires_grad_() if bias else None
    ref = F.conv2d(x, w, b, stride, pad)
    out = gemm_conv2d(x, w, b, (stride, stride), (pad, pad), (1, 1))
    assert out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    up = torch.randn(ref.shape, generator=g)
    grads_ref = torch.autograd.grad(ref, [x, w] + ([b] if bias else []), up)
    grads = torch.autograd.grad(out, [x, w] + ([b] if bias else []), up)
    for a, r in zip(grads, grads_ref):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-4)


def test_small_convs_are_chosen_by_shape_and_named_in_the_notes():
    train, val, _ = splits()
    t = ClassifierTrainer(cfg(), train, val, ["a", "b"])   # 16 px: the last stage runs at 2 x 2
    assert t.gemm_convs == ["features.21", "features.24"]
    assert all(type(m) is GemmConv2d for n, m in t.net.named_modules() if n in t.gemm_convs)
    assert any("im2col" in n and "features.21" in n for n in t.notes)
    big = ClassifierTrainer(cfg(image_size=64), *splits(64)[:2], ["a", "b"])   # smallest output 8 x 8: none
    assert big.gemm_convs == [] and big.notes == []
    bf16 = ClassifierTrainer(cfg(precision="bf16"), train, val, ["a", "b"])   # only the fp32 CPU path
    assert bf16.gemm_convs == []
    # the swap keeps the network's parameters and state-dict keys (torchvision's)
    assert list(t.net.state_dict()) == list(build_model("small_cnn", 2).state_dict())


@pytest.mark.parametrize("model,size", [("small_cnn", 16), ("resnet18", 32)])
def test_same_gradients_and_losses_as_the_plain_path_from_the_same_weights(monkeypatch, model, size):
    """The first step's gradients agree to 1e-4 of each tensor's largest (or 1e-6); then 4 steps' losses.
    AdamW moves a weight by about lr whatever the size of its gradient, so near-zero gradients that
    differ in the last bits move weights differently by up to lr each step: the losses are compared
    at lr 1e-5, where that spread stays below LOSS_TOL (at lr 1e-3 it reaches 1e-2 by step 4, which
    the plain path shows alike between thread counts)."""
    train, val, _ = splits(size)
    rule = T.GEMM_CONV_MAX_POSITIONS

    def run(max_positions):
        monkeypatch.setattr(T, "GEMM_CONV_MAX_POSITIONS", max_positions)
        t = ClassifierTrainer(cfg(model=model, image_size=size, lr=1e-5), train, val, ["a", "b"])
        t.net.train()
        out, grads = [], None
        for step in range(4):
            t.train_step(torch.arange(step * 6, step * 6 + 8) % 24)
            out.append(t.read_sums()[0])
            if grads is None:
                grads = {n: p.grad.clone() for n, p in t.net.named_parameters()}
        return t, out, grads

    plain_t, plain, plain_g = run(0)
    gemm_t, fast, fast_g = run(rule)
    assert plain_t.gemm_convs == [] and len(gemm_t.gemm_convs) >= 2
    for name, g in plain_g.items():
        # or 1e-6 absolute: a 2-class head's bias gradient is a difference of numbers near 0.5 (1e-5 here)
        assert torch.allclose(fast_g[name], g, rtol=0, atol=1e-4 * float(g.abs().max()) + 1e-6), name
    assert np.allclose(fast, plain, rtol=LOSS_TOL, atol=0), (fast, plain)
    # eval mode is the ordinary convolution: the same probabilities from the same weights
    gemm_t.net.load_state_dict(plain_t.net.state_dict())
    p_fast, _ = gemm_t.predict(gemm_t.val_x)
    p_plain, _ = plain_t.predict(plain_t.val_x)
    assert np.array_equal(p_fast, p_plain)


def test_resume_on_the_gemm_path_equals_the_uninterrupted_run(tmp_path):
    train, val, test = splits(seed=2)
    c = cfg(epochs=3)
    full = train_classifier(c, train, val, test, ["a", "b"], checkpoint_dir=tmp_path / "full")
    assert any("im2col" in n for n in full.notes)
    seen = []
    stopped = train_classifier(c, train, val, test, ["a", "b"], checkpoint_dir=tmp_path / "cut",
                               on_epoch=lambda e, m: seen.append(e), should_stop=lambda: len(seen) >= 1)
    assert stopped.state == "stopped" and [h["epoch"] for h in stopped.history] == [1]
    resumed = train_classifier(c, train, val, test, ["a", "b"], checkpoint_dir=tmp_path / "cut", resume=True)
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("epoch_seconds", "img_per_s")} for e in h]
    assert strip(resumed.history) == strip(full.history)
    assert np.array_equal(resumed.test_probs, full.test_probs) and resumed.best_epoch == full.best_epoch
    # the saved model is the plain network: the same probabilities
    net, info = T.load_trained(resumed.model_path)
    x = torch.as_tensor(test[0][:, None]).float().div(255).sub(info["mean"]).div(info["std"])
    with torch.no_grad():
        probs = torch.softmax(net(x), 1).numpy()
    assert np.allclose(probs, full.test_probs, atol=1e-5)
