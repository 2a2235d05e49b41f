"""White-box L-inf attacks on an N-member surrogate ensemble, one attack per module (as CleverHans).

Paper attacks (§2.3, §4.1; ``ATTACKS``, the default of ``evaluate``), all untargeted, L-inf, true
labels passed explicitly, outputs in the eps-ball of the clean ``x`` and in [0, 1]:

* ``fgsm``   -- Eq 2, CleverHans ``fast_gradient_method`` (:mod:`.fgsm`).
* ``rfgsm``  -- random step then FGSM (:mod:`.rfgsm`, both readings).
* ``ifgsm``  -- Eqs 3-4, k = 10 steps of eps/10 (CleverHans PGD without random start; :mod:`.pgd`).
* ``mifgsm`` -- Eq 5 momentum, mu = 1.0, k = 10 (:mod:`.mifgsm`).
* ``pgd_cw`` -- PGD on the CW hinge, kappa = 50, 30 iterations, step 2.5 eps / 30 (:mod:`.pgd_cw`).

Field attacks (issue 23; ``FIELD_ATTACKS``: DVERGE / TRS's transfer protocol), each with
``loss="ce"`` or ``"cw"`` (``confidence``) and ``nb_iter`` 100 by default:

* ``mpgd``     -- momentum PGD with random restarts combined per image (:mod:`.momentum_pgd`).
* ``mdi2fgsm`` -- M-DI²-FGSM, input diversity p = 0.5 (:mod:`.mdi2fgsm`, :mod:`.input_diversity`).
* ``sgm``      -- skip gradient method, gamma = 0.2, residual surrogates only (:mod:`.sgm`).

Shared pieces (logits functions, objectives, seeds, projections) are in :mod:`.core`;
:func:`make_attack` (:mod:`.registry`) returns a callable ``(x, y, seed) -> x_adv`` compiled once.
"""

from tf_divtrain.attacks.core import (  # noqa: F401
    CLIP_MAX, CLIP_MIN, CW_CONFIDENCE, LOSSES, MI_DECAY, NB_ITER, PGD_CW_ITER, PGD_CW_STEP_FACTOR,
    MemberLogitsFn, as_logits_fn, check_confidence, check_eps, check_nb_iter, cw_loss_fn,
    cw_margin_loss, ensemble_ce, fgm_step, input_gradient, loss_fn_for, prediction_ce, prep,
    project, random_start, seed_pair)
from tf_divtrain.attacks.fgsm import fgsm  # noqa: F401
from tf_divtrain.attacks.input_diversity import (  # noqa: F401
    DIVERSITY_PROB, RESIZE_RATIO, diversity_params, input_diversity, padded_size)
from tf_divtrain.attacks.mdi2fgsm import mdi2fgsm  # noqa: F401
from tf_divtrain.attacks.mifgsm import mifgsm  # noqa: F401
from tf_divtrain.attacks.momentum_pgd import (  # noqa: F401
    FIELD_NB_ITER, FIELD_STEP_FACTOR, MOMENTUM, check_restarts, momentum_iterate, momentum_pgd,
    restart_seed, worst_restart)
from tf_divtrain.attacks.pgd import ifgsm, pgd  # noqa: F401
from tf_divtrain.attacks.pgd_cw import pgd_cw  # noqa: F401
from tf_divtrain.attacks.registry import (  # noqa: F401
    ALL_ATTACKS, ATTACKS, DISPLAY_NAMES, FIELD_ATTACKS, Attack, check_attack, check_option_values,
    check_options, make_attack)
from tf_divtrain.attacks.rfgsm import rfgsm  # noqa: F401
from tf_divtrain.attacks.sgm import (  # noqa: F401
    SGM_GAMMA, NotResidualError, branch_gradient_scale, hookable_surrogate, sgm, sgm_gradient)

_prep, _fgm_step, _loss_fn = prep, fgm_step, loss_fn_for  # the pre-package private names
