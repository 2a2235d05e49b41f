"""Training runs (paper §3-4): TrainConfig (one validation), Trainer (ensemble, optimizer, strategy,
the compiled step) and ``train()``, which composes small named pieces -- data, seeding, out_dir
guard, checkpoint restore, the loop with its hooks (``tf_divtrain.loop``), final metrics, export.
The maths of the step is in ``tf_divtrain.step`` (shared with ``DiversityEnsemble``).

Modes and what one batch of ``B`` distinct training images holds (parts of equal size, the
remainder going to the first part, in this order; see ``data.train_stream``):

* ``baseline``     -- {D'}: CE only (Eq 9 with lambda = 0).
* ``div``          -- {D', D_noise}: Eq 9, CE + lambda * GAL.
* ``ens_adv``      -- {D', D_adv}: CE only. D_adv = FGSM on a static pre-trained model, each example
  with its own epsilon ~ |N(0, sigma = adv_eps / 2)| truncated at 2 sigma (so eps <= adv_eps).
* ``ens_adv_div``  -- {D', D_noise, D_adv}: Eq 9 (GAL on the whole batch).
* ``adp`` / ``trs`` / ``dverge`` -- {D'}: the peer methods of issue 14 (``tf_divtrain.methods``:
  ADP, Pang et al. 2019; TRS, Yang et al. 2021; DVERGE, Yang et al. 2020) with their authors'
  defaults, overridable with ``method_params="name=value,..."``. The authors train on clean images
  (plain for MNIST; shifted/cropped and flipped for CIFAR-10); D' is this package's clean augmented
  source, so every mode sees the same images. Per-epoch schedules (TRS's PGD radius, DVERGE's
  layer) are set by ``Trainer.begin_epoch``; see ``tf_divtrain.methods.objective`` for DVERGE's
  target batch (a seeded derangement of the same batch) and the stateless seeds. DVERGE trains from
  scratch like every other mode (the authors start from a pre-trained baseline by default).

D_adv follows Kurakin et al. 2016 / Tramer et al. 2018 where the paper (§4.2) is silent:
``adv_labels="predicted"`` crafts the FGSM with the static model's own predicted labels, not the
true ones (true labels leak into one-step perturbations: "label leaking", Kurakin et al. §4.2), and
``adv_share`` (default 0.5) of every batch is D_adv in both ens_adv modes, so clean and adversarial
losses weigh equally (Tramer et al.'s 0.5 / 0.5) and T_Ens and T_Ens+Div see the same D_adv per
step; the rest of the batch is split equally between the other sources (``batch_parts``).

CE and GAL are computed on every example of the batch. BatchNorm (ResNets): members run in
training mode during the step -- the single forward pass inside the inner tape uses batch
statistics and updates the moving averages once per step (the CE term reuses that forward, so
there is no second update); evaluation, attacks and the export use inference mode.

Losses are per-example sums divided by the *global* batch size, so N replicas of a
``tf.distribute`` strategy compute exactly the gradient of one big batch.
"""

# The three jobs, one file each (tensorflow/models' config / trainer / run): every public name is
# importable from here as before (``from tf_divtrain import training; training.Trainer``).
from tf_divtrain.training.config import (  # noqa: F401
    ADV_LABELS, ADV_MODES, GAL_MODES, MAX_SKIPPED_FP16_STEPS, METHOD_MODES, MODES, RESUMABLE_KEYS,
    STRATEGIES, TrainConfig, TrainingError, batch_parts)
from tf_divtrain.training.trainer import (  # noqa: F401
    Trainer, gradient_statistics, is_chief, make_strategy, objective_for_mode,
    per_example_objective)
from tf_divtrain.training.run import (  # noqa: F401
    _config_diff, checkpoint_manager, default_hooks, export_run, final_metrics, float32_ensemble,
    load_static_model, prepare_out_dir, seed_everything, step_budget, train)
