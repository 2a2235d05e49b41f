"""The training step and the attacks are compiled with autograph off (issue 24: converting the
Keras internals they call took about a quarter of a short run's start-up). Their loops are
``tf.while_loop`` or Python ranges, so autograph has nothing to convert: off must give exactly the
numbers of on, the straightforward path, for every objective and every attack."""

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import attacks, models, training
from tf_divtrain.attacks.core import as_logits_fn


def _weights(tr):
    return [w for m in tr.ensemble.members for w in m.get_weights()]


@pytest.mark.parametrize("mode, params",
                         [("ens_adv_div", ""), ("dverge", "steps=1,rand_start=true")])
def test_train_step_without_autograph_equals_with_it(mnist_batch, mode, params):
    """T_Ens+Div's step holds every piece of the GAL modes (noise, FGSM on the static model, the
    nested tape); DVERGE's holds a ``tf.while_loop``."""
    x, y = tf.constant(mnist_batch[0][:16]), tf.constant(mnist_batch[1][:16])
    static = as_logits_fn(models.build_ensemble("conv3", (28, 28, 1), 10, 1, seed=7))
    runs = []
    for autograph in (False, True):
        cfg = training.TrainConfig(mode=mode, ensemble_size=2, batch_size=16, seed=1,
                                   method_params=params, out_dir="unused",
                                   static_model="given" if mode == "ens_adv_div" else "")
        tr = training.Trainer(cfg, (28, 28, 1), 10, static_model=static)
        if autograph:  # the straightforward path: tf.function's default
            tr._train_step = tf.function(tr._distributed_step, autograph=True)
        losses = [float(tr.train_step(x, y)["loss"]) for _ in range(2)]
        runs.append((losses, _weights(tr)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


_OPTIONS = {"ifgsm": {"nb_iter": 3}, "mifgsm": {"nb_iter": 3}, "pgd_cw": {"nb_iter": 3},
            "mpgd": {"nb_iter": 3, "restarts": 2}, "mdi2fgsm": {"nb_iter": 3}}


@pytest.mark.parametrize("name", [a for a in attacks.ALL_ATTACKS if a != "sgm"])
def test_attack_without_autograph_equals_with_it(name, tiny_cnn, mnist_batch):
    """SGM is left out: it needs a residual surrogate; its body is a plain gradient rescale."""
    ens = models.Ensemble([tiny_cnn(1), tiny_cnn(11)])
    x, y = mnist_batch[0][:8], mnist_batch[1][:8]
    attack = attacks.make_attack(name, ens, 0.1, **_OPTIONS.get(name, {}))
    off = attack(x, y, 3).numpy()
    attack._fn = tf.function(attack._body, input_signature=attack._fn.input_signature,
                             autograph=True)
    on = attack(x, y, 3).numpy()
    np.testing.assert_array_equal(off, on)
    assert np.abs(off - x).max() > 0  # the attack moved the images


def test_data_maps_without_autograph_equal_with_it(data_dir, monkeypatch):
    """The training stream and the Keras API's map functions skip autograph (it cost ~2 s the first
    time in a process); with it (``Dataset.map``'s default, the straightforward path) they give the
    same batches, bit for bit. CIFAR-10: its D' has every op MNIST's has, plus the flip."""
    from tf_divtrain import data

    dataset = "cifar10"
    arrays = data.load_arrays(dataset, data_dir)
    x, y = arrays["x_train"][:64], arrays["y_train"][:64]

    def batches():
        tf.random.set_seed(11)  # the shuffle and the maps' call seeds are op-seeded
        stream = data.train_stream(x, y, dataset, 16, ("aug", "noise"), None, seed=3)
        out = [b[0].numpy() for b in stream.take(3)]
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        for fn in (data.diversity_map(dataset, seed=5), data.augment_map(dataset, seed=6),
                   data.noise_map(0.1, seed=7)):
            tf.random.set_seed(11)
            out += [b[0].numpy() for b in ds.map(fn).take(2)]
        return out

    off = batches()
    monkeypatch.setattr(data, "_no_autograph", lambda fn: fn)
    on = batches()
    assert len(off) == len(on) == 9
    for a, b in zip(off, on):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(off[0], off[1])  # the stream moves on
