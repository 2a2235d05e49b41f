"""TRS: Transferability Reduced Smooth ensemble (Yang et al., NeurIPS 2021, arXiv:2104.00671).

Paper, §5 ("TRS training"): L = L_ECE + lambda_a * L_sim + lambda_b * L_smooth with
  L_sim    = mean over pairs i < j of |CS(grad_x l_i, grad_x l_j)|   (ABSOLUTE cosine: an
             anti-aligned pair transfers as well as an aligned one),
  L_smooth = gradient magnitude  ||grad_x l_i||_2^2  averaged over members (model smoothness).
(The paper text was not available offline, so no equation numbers; every formula below is transcribed
from the authors' code, AI-secure/Transferability-Reduced-Smooth-Ensemble, train/Empirical/trainer.py
``TRS_Trainer`` / ``PGD`` and utils/Empirical/utils_ensemble.py ``Cosine`` / ``Magnitude``.)

Their loss per batch (3 members hard-coded; generalised here to N):
  loss = sum_i CE_i + scale * (coeff * cos + lamda * smooth)
  cos    = (1/#pairs) sum_{i<j} mean_b |cos(g_i,b, g_j,b)|
  smooth = (1/N) sum_i Magnitude(g_i),  Magnitude(g) = 2 * mean_b ||g_b||^2
where g_i = grad_x of member i's batch-MEAN CE, so each per-example gradient carries a factor 1/B.

Defaults (``TRSConfig``), from their utils/Empirical/script_train.py (the script that writes their
training commands): coeff = 2, lamda = 2, scale = 5, ``plus_adv`` = True with init_eps = 0.1,
adv_eps = 0.2 (that script is set up for MNIST); PGD for the smoothness term: 6 steps of size eps/3
from a uniform random start (hard-coded in their ``PGD``). There is no CE-only warm-up in
train_trs.py; the only schedule is the PGD radius, ramped linearly per epoch (``smooth_eps``):
eps(epoch) = init_eps + (adv_eps - init_eps) * epoch / epochs (epoch counted from 0). Their optional
``--resume`` starts TRS from a pre-trained vanilla ensemble; that is the trainer's choice.

With ``plus_adv`` the smoothness term is evaluated on a half-clean / half-perturbed batch: the first
B//2 examples at x, the rest at PGD(x) -- a 6-step sign ascent on the members' mean gradient
magnitude inside the L_inf eps-ball (so it is *not* random noise). Without ``plus_adv`` it is the
gradient at clean x, the same gradients as the cosine term.

Deviations from their code:

* Per-example input gradients are of each example's own CE (tf_divtrain.gal.member_input_gradients),
  and the 1/B of their batch-mean gradients is reproduced with a FIXED ``grad_batch_size`` (their
  ``--batch`` default, 128): smooth enters the loss as  lamda * 2 * mean_i ||grad_x CE_i||^2 /
  grad_batch_size^2. Using the actual per-replica batch instead would make the loss depend on the
  replica split under tf.distribute. The reported metric ``trs_smooth`` is the raw
  (1/N) sum_i ||grad_x CE_i||^2 (no 2/B^2 factor). The cosine is scale-free, so unaffected.
* The PGD for the smoothness term runs the members in inference mode (their code: training mode, so
  BatchNorm used batch statistics and updated its moving averages during the 6 PGD steps); the
  input-gradient forward passes of the loss itself use ``training`` as given.
* When PGD is used, the clean half's gradients are reused from the cosine term (their code runs the
  concatenated batch through the members again; identical without BatchNorm).
* Mean over pairs for ``cos`` and over members for ``smooth``: their code divides both by 3 (= pairs
  = members for their 3-member ensembles).
"""

from __future__ import annotations


import tensorflow as tf

from tf_divtrain import gal as gal_lib
from tf_divtrain.methods import _common


from tf_divtrain.methods.configs import TRSConfig, check_number  # noqa: F401


def abs_pair_cosine(grads):
    """|CS| averaged over pairs i < j, per example: [B, N, D] -> [B] (their ``Cosine``)."""
    return tf.reduce_mean(tf.abs(gal_lib.pair_cosines(grads)), axis=-1)


def squared_grad_norm(grads):
    """||g||^2 per member: [B, N, D] -> [B, N]."""
    return tf.reduce_sum(tf.square(grads), axis=-1)


def _as_dtype(v, dtype):
    """Python numbers straight to ``dtype`` (no float32 round trip), tensors cast."""
    return tf.cast(v, dtype) if isinstance(v, (tf.Tensor, tf.Variable)) else tf.constant(v, dtype)


def smoothness_pgd(members, x, y, eps, steps: int = 6, seed=None, step_size=None):
    """Their ``PGD``: L_inf sign ascent on the members' mean squared input-gradient norm, from a uniform
    random start in the eps-ball, ``steps`` steps of ``step_size`` (default eps/3), projected onto the
    eps-ball of x and [0, 1]. Members run in inference mode. Returns the perturbed x (no gradient)."""
    check_number("trs.smoothness_pgd", "eps", eps, low=0.0, high=1.0)
    check_number("trs.smoothness_pgd", "steps", steps, low=1, integer=True)
    if seed is None:
        raise ValueError("trs.smoothness_pgd: seed (shape [2] int) is required for the random start.")
    fmembers = _common.float32_members(members)
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    eps = _as_dtype(eps, x.dtype)
    step_size = eps / 3.0 if step_size is None else _as_dtype(step_size, x.dtype)
    start = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0, dtype=x.dtype) * eps
    x_adv = tf.clip_by_value(x + start, 0.0, 1.0)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            grads, _, _ = gal_lib.member_input_gradients(fmembers, x_adv, y, training=False)
            magnitude = tf.reduce_sum(tf.reduce_mean(squared_grad_norm(grads), axis=-1))
        direction = tf.sign(tape.gradient(magnitude, x_adv))
        x_adv = tf.clip_by_value(x_adv + step_size * direction, x - eps, x + eps)
        x_adv = tf.clip_by_value(x_adv, 0.0, 1.0)
    return tf.stop_gradient(x_adv)


def objective(members, x, y, training: bool = True, coeff: float = 2.0, lamda: float = 2.0,
              scale: float = 5.0, grad_batch_size: int = 128, smooth_eps=0.0, pgd_steps: int = 6,
              seed=None) -> dict:
    """TRS per example: sum_i CE_i + scale * (coeff * |cos| + lamda * 2 * smooth / grad_batch_size^2).

    ``smooth_eps`` = 0 (Python number): smoothness at clean x. Otherwise (a number > 0 or a tensor,
    e.g. ``TRSConfig.smooth_eps(epoch, epochs)``) the second half of the batch (examples B//2..B-1)
    is replaced by ``smoothness_pgd`` for the smoothness term; ``seed`` ([2] ints) is then required.
    Call under an outer GradientTape: both terms need double backprop.

    Returns ``loss`` [B], ``ce`` [B, N], ``logits`` [B, N, C], ``trs_cos`` [B] (mean |cosine| over
    pairs), ``trs_smooth`` [B] ((1/N) sum_i ||grad_x CE_i||^2 at the smoothness inputs).
    """
    TRSConfig(coeff=coeff, lamda=lamda, scale=scale, grad_batch_size=grad_batch_size,
              pgd_steps=pgd_steps).validate()
    _common.check_members(members, "TRS")
    use_pgd = isinstance(smooth_eps, (tf.Tensor, tf.Variable))
    if not use_pgd:
        check_number("trs", "smooth_eps", smooth_eps, low=0.0, high=1.0)
        use_pgd = smooth_eps > 0
    if use_pgd and seed is None:
        raise ValueError("trs: seed (shape [2] int) is required when smooth_eps > 0 (PGD random start).")
    fmembers = _common.float32_members(members)
    grads, logits, ce = gal_lib.member_input_gradients(fmembers, x, y, training=training)
    cos = abs_pair_cosine(grads)
    sq = squared_grad_norm(grads)
    if use_pgd:
        half = tf.shape(x)[0] // 2
        x_tail = smoothness_pgd(members, x[half:], y[half:], smooth_eps, pgd_steps, seed)
        tail_grads, _, _ = gal_lib.member_input_gradients(fmembers, x_tail, y[half:], training=training)
        sq = tf.concat([sq[:half], squared_grad_norm(tail_grads)], axis=0)
    smooth = tf.reduce_mean(sq, axis=-1)
    smooth_weight = 2.0 * lamda / float(grad_batch_size) ** 2
    loss = tf.reduce_sum(ce, axis=-1) + scale * (coeff * cos + smooth_weight * smooth)
    return {"loss": loss, "ce": ce, "logits": logits, "trs_cos": cos, "trs_smooth": smooth}
