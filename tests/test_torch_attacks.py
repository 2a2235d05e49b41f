"""benchmarks/torch_attacks.py crafts the same adversarial examples as tf_divtrain.attacks (issue 26).

The attack benchmark (benchmarks/attack_bench.py) compares the speed of two implementations; this
checks they compute the same thing: Keras weights copied into the PyTorch members, the same
images, the same PGD-CW random start -> the same adversarial examples within float32 tolerance.
Sign steps are discontinuous, so an input-gradient element within round-off of 0 (or a max-pool
near-tie) may step the other way: see the test's docstring for the tolerance. Tiny sizes (2 members, 4 images): fast.
Skipped without torch (CI does not install it).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tensorflow as tf  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mods():
    from benchmarks import torch_attacks, torch_gal

    return torch_gal, torch_attacks


def _setup(model, shape, members=2, batch=4):
    from tf_divtrain import models

    tg, ta = _mods()
    ens = models.build_ensemble(model, shape, 10, members, seed=3)
    tmembers = tg.build_ensemble(members, shape, 10, model=model)
    for tm, km in zip(tmembers, ens.members):
        tg.load_keras_weights(tm, km)
    ta.freeze(tmembers)
    x = tf.random.stateless_uniform((batch,) + shape, [7, 8])
    y = tf.random.stateless_uniform([batch], [9, 10], 0, 10, dtype=tf.int64)
    return ens, tmembers, x, y, tg, ta


def _close(a, b, max_step, frac=0.999):
    diff = np.abs(a - b)
    assert diff.max() <= max_step + 1e-5, diff.max()
    assert (diff <= 1e-5).mean() >= frac, f"{(diff > 1e-5).mean():.4%} elements differ"


@pytest.mark.parametrize("model,shape,eps", [("conv3", (28, 28, 1), 0.3), ("conv4", (32, 32, 3), 0.03)])
def test_torch_attacks_equal_ours(model, shape, eps):
    """One iteration: equal but for round-off sign flips (< 0.1 % of elements). Four iterations:
    a flipped element changes the next iterate's gradients, so trajectories drift apart a little
    (measured on Conv-4 noise images: 0.008 % / 0.18 % / 2.7 % of elements after 1 / 2 / 4 PGD-CW
    steps); then >= 95 % of elements equal and the attained objective equal within 2 %."""
    from tf_divtrain import attacks

    ens, tm, x, y, tg, ta = _setup(model, shape)
    tx, ty = tg.to_torch_images(x.numpy()), torch.from_numpy(y.numpy())
    with torch.no_grad():  # the same function first: member logits
        tl = ta.member_logits(tm, tx).numpy()
    np.testing.assert_allclose(tl, ens.member_logits(x).numpy(), rtol=1e-4, atol=1e-5)
    seed = tf.constant([0, 5], tf.int64)
    start = tg.to_torch_images(attacks.random_start(x, eps, seed).numpy())  # ours' start for seed
    objective = {"ifgsm": attacks.ensemble_ce, "pgd_cw": attacks.cw_loss_fn(attacks.CW_CONFIDENCE)}
    for name in ("ifgsm", "pgd_cw"):
        for k, frac in ((1, 0.999), (4, 0.95)):
            ours = attacks.make_attack(name, ens, eps, nb_iter=k)(x, y, seed=seed).numpy()
            if name == "ifgsm":
                theirs = ta.ifgsm(tm, tx, ty, eps, k)
                step = eps / k
            else:
                theirs = ta.pgd_cw(tm, tx, ty, eps, k, start=start)
                step = min(2.5 * eps / k, eps)
            theirs = theirs.permute(0, 2, 3, 1).numpy()
            assert np.abs(ours - x.numpy()).max() > 0.5 * min(eps, k * step)  # it moved
            _close(ours, theirs, 2 * eps if k > 1 else 2 * step, frac)
            lo, lt = (float(np.mean(objective[name](labels=y, logits=ens.member_logits(tf.constant(a)))))
                      for a in (ours, theirs))
            assert abs(lo - lt) <= 0.02 * abs(lo) + 1e-4, (name, k, lo, lt)
