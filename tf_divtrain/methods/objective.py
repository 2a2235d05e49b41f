"""The peer methods as training-step objectives: the Trainer's modes ``adp``, ``trs``, ``dverge``.

``MethodObjective(name, config, seed, step)`` follows the objective protocol of
:mod:`tf_divtrain.step` (``objective(members, x, y, training, loss_scale=None) -> dict``), so the
Trainer's ``_replica_step`` / ``step.apply_step`` path is the same as for GAL. What a method needs
beyond one batch lives here:

* **Per-epoch schedules** (``begin_epoch(epoch, epochs, members)``, called by
  ``Trainer.begin_epoch``): TRS's PGD radius is a non-trainable ``tf.Variable`` read inside the
  compiled step (no retrace); DVERGE's distillation layer is a Python int (its features come from a
  different sub-model per layer), exposed as ``trace_key`` so the Trainer retraces its step once per
  distinct layer (at most ``min(epochs, #candidate layers)`` traces; a ``tf.switch_case`` over all
  candidates would trace every layer's distillation up front instead).
* **Randomness** (TRS's PGD random start, DVERGE's target permutation and optional random start) is
  stateless: seeds are ``fold_in([seed, step], salt)`` (then folded with the replica id), where
  ``step`` is the Trainer's global-step variable read inside the step, so runs are deterministic and
  a resumed run draws exactly what an uninterrupted one would.
* **DVERGE's target batch**: the authors distil towards a second, independently shuffled training
  batch (their ``DistillationLoader``). Here the target of every image is another image of the SAME
  batch under a seeded cyclic permutation (a derangement: no image is its own target): the pairs
  (source, target) are still uniform random pairs of distinct training images, without a second
  data pipeline; every image then serves once as a source and once as a target per step. Under a
  multi-replica strategy the permutation is within each replica's rows.

Batch composition: every method trains on {D'} (the augmented clean images of the baseline mode).
The authors' loaders also feed clean training images (plain for MNIST; shifted/cropped and flipped
for CIFAR-10); by default none of them adds noise or static-model adversarial examples to the
batch, and their optional adversarial-training terms (e.g. ``--plus-adv``) are not part of these
modes (see each method module).
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tf_divtrain.methods import adp, dverge, get_method, make_config, trs

# Salts of the stateless seeds: one independent stream per use.
_SALT_TRS_PGD, _SALT_DVERGE_PERM, _SALT_DVERGE_START = 1, 2, 3


class MethodObjective:
    """Step objective of a peer method (ADP, TRS, DVERGE) with its schedule and seeds.

    ``config``: the method's validated config (default: the registry defaults). ``seed``: the run's
    seed. ``step``: an int64 ``tf.Variable`` counting optimisation steps (the Trainer's global step);
    TRS (with ``plus_adv``) and DVERGE need it for their stateless per-step randomness.
    """

    def __init__(self, name: str, config=None, seed: int = 0, step: Optional[tf.Variable] = None):
        self.method = get_method(name)
        self.name = name
        self.config = make_config(name) if config is None else config
        if type(self.config) is not type(self.method.defaults):
            raise ValueError(f"MethodObjective({name!r}): config must be a "
                             f"{type(self.method.defaults).__name__}, got {type(self.config).__name__}.")
        self.config.validate()
        self.seed = int(seed)
        self.step = step
        self.epoch = None
        self.layer = None  # DVERGE: the distillation layer of the current epoch
        self.smooth_eps = None  # TRS: PGD radius of the current epoch (a tf.Variable)
        if name == "trs" and self.config.plus_adv:
            self.smooth_eps = tf.Variable(float(self.config.smooth_eps(0, 1)), trainable=False,
                                          dtype=tf.float32, name="trs_smooth_eps")

    # -- schedule -------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, epochs: int, members) -> dict:
        """Sets the schedule of ``epoch`` (0-based) of ``epochs``; returns what it set."""
        self.epoch = int(epoch)
        if self.name == "trs" and self.smooth_eps is not None:
            self.smooth_eps.assign(float(self.config.smooth_eps(int(epoch), int(epochs))))
            return {"trs_smooth_eps": float(self.smooth_eps.numpy())}
        if self.name == "dverge":
            try:
                layer = self.config.pick_layer(members[0], int(epoch), self.seed)
            except ValueError as e:
                choices = dverge.distill_layer_choices(members[0])
                raise ValueError(f"{e} Fix: --method_params=layer=K with K one of the candidate "
                                 f"feature layers {choices} of this model, or leave layer unset for a "
                                 f"random candidate per epoch (the authors' default).") from None
            for m in members:  # build the feature sub-models eagerly, outside any trace
                dverge.feature_model(m, layer)
            self.layer = layer
            return {"dverge_layer": layer}
        return {}

    @property
    def trace_key(self):
        """Python state the compiled step depends on (DVERGE's layer), else None."""
        return self.layer

    # -- seeds ----------------------------------------------------------------------------------
    def step_seed(self, salt: int):
        """[2] int64 stateless seed from (seed, global step, salt, replica id)."""
        if self.step is None:
            raise ValueError(f"{self.name}: this objective draws random numbers per step and needs the "
                             f"global step: MethodObjective(..., step=<int64 tf.Variable>) (the Trainer "
                             f"passes its own).")
        base = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(tf.convert_to_tensor(self.step), tf.int64)])
        s = tf.random.experimental.stateless_fold_in(base, salt)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None:
            s = tf.random.experimental.stateless_fold_in(s, tf.cast(ctx.replica_id_in_sync_group, tf.int64))
        return s

    def dverge_targets(self, x):
        """Distillation targets: row ``perm[i]`` gets row ``perm[(i + 1) % B]`` (a seeded derangement
        of the batch, see the module docstring)."""
        b = tf.shape(x)[0]
        perm = tf.argsort(tf.random.stateless_uniform([b], self.step_seed(_SALT_DVERGE_PERM)))
        index = tf.scatter_nd(perm[:, None], tf.roll(perm, -1, axis=0), [b])
        return tf.gather(x, index)

    # -- the objective --------------------------------------------------------------------------
    def __call__(self, members, x, y, training: bool = True, loss_scale=None) -> dict:
        del loss_scale  # ADP has no inner tape; TRS/DVERGE refuse mixed_float16 (TrainConfig.validate)
        cfg = self.config
        if self.name == "adp":
            return adp.objective(members, x, y, training=training, **cfg.objective_kwargs())
        if self.name == "trs":
            kw = cfg.objective_kwargs(0, 1)
            if self.smooth_eps is not None:
                kw.update(smooth_eps=self.smooth_eps, seed=self.step_seed(_SALT_TRS_PGD))
            return trs.objective(members, x, y, training=training, **kw)
        if self.layer is None:
            self.begin_epoch(0, 1, members)  # used outside a Trainer: epoch 0's layer
        seed = self.step_seed(_SALT_DVERGE_START) if cfg.rand_start else None
        distilled = dverge.distill_members(members, x, self.dverge_targets(x), self.layer, seed=seed,
                                           **cfg.distill_kwargs())
        # x_clean = the clean batch: with include_clean it is the extra CE term (their --plus-adv
        # form, clean instead of PGD inputs); without, it only gives the logits of the train
        # accuracy (an inference-mode forward outside the loss).
        return dverge.objective(members, distilled, y, training=training, x_clean=x,
                                **cfg.objective_kwargs())

    def __repr__(self):
        return f"MethodObjective({self.name!r}, {self.config!r})"


__all__ = ["MethodObjective"]
