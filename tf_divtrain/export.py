"""SavedModel export of a trained ensemble, and the loader every other tool uses.

Contract of ``<out_dir>/saved_model/`` (loadable with ``tf.saved_model.load``):

* ``serve(images)`` and the ``serving_default`` signature: float32 images ``[B, H, W, C]`` in
  [0, 1], any B -> ``{"probabilities": [B, classes]`` (the ensemble's average softmax),
  ``"member_logits": [B, N, classes]}``. Gradients flow through ``serve``; members run in
  inference mode (BatchNorm uses its moving statistics).
* The graph computes in float32 (training in a mixed precision exports a float32 copy), so every
  tool that loads it evaluates in float32 unless it asks ``load_ensemble`` for another precision.
* ``member_weights``: each member's variables in Keras order (rebuilding in another precision).
* ``metadata``: a string variable holding JSON (dataset, input_shape, num_classes, models, mode,
  seed, ...), read back by :func:`load_ensemble`.

The ensemble is saved as a ``tf.Module`` with ``tf.saved_model.save``, so each weight is stored
once (``keras.Model.export`` would store it twice).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Optional

import tensorflow as tf

from tf_divtrain import data as data_lib
from tf_divtrain import io_utils
from tf_divtrain import models as models_lib
from tf_divtrain import precision as precision_lib

SAVED_MODEL_DIR = "saved_model"


class _ServingModule(tf.Module):
    def __init__(self, ensemble: models_lib.Ensemble, metadata: dict):
        super().__init__(name="tf_divtrain_ensemble")
        self.members = list(ensemble.members)
        # Each member's weights in Keras order, so a loader can rebuild the members in another
        # precision (``load_ensemble(..., precision=...)``); the variables are stored once.
        self.member_weights = [list(m.weights) for m in ensemble.members]
        self.metadata = tf.Variable(json.dumps(metadata, sort_keys=True), trainable=False,
                                    dtype=tf.string, name="metadata")
        shape = [None] + list(metadata["input_shape"])
        self.serve = tf.function(self._serve, autograph=False,
                                 input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])

    def _serve(self, images):
        logits = models_lib.member_logits(self.members, images, training=False)
        return {"probabilities": models_lib.ensemble_probabilities(logits), "member_logits": logits}


def export_ensemble(ensemble: models_lib.Ensemble, export_dir: str, metadata: dict,
                    overwrite: bool = False) -> str:
    """Writes the SavedModel to ``export_dir`` atomically (a temp dir renamed into place).

    ``metadata`` must hold at least ``dataset``, ``input_shape`` and ``num_classes``. An existing
    export is replaced only when ``overwrite`` is True.
    """
    for key in ("dataset", "input_shape", "num_classes"):
        if key not in metadata:
            raise ValueError(f"export metadata lacks {key!r}.")
    metadata = dict(metadata, input_shape=list(metadata["input_shape"]),
                    num_members=ensemble.size)
    if os.path.exists(export_dir) and not overwrite:
        raise FileExistsError(f"{export_dir} already exists; pass overwrite=True to replace it.")
    module = _ServingModule(ensemble, metadata)
    tmp, old = export_dir.rstrip("/") + ".tmp", export_dir.rstrip("/") + ".old"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        # The previous export is renamed, not deleted, until the new one is in place: a kill
        # between the two renames leaves both on disk and neither half-written.
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(export_dir):
            os.replace(export_dir, old)
        io_utils.fault_point("export:swap", tmp)
        os.replace(tmp, export_dir)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, tf.errors.OpError) as e:
        raise io_utils.output_error(export_dir, e) from e
    return export_dir


class LoadedEnsemble:
    """A callable ensemble restored from an export directory.

    ``member_logits(x)`` -> [B, N, C]; ``probabilities(x)`` -> [B, C]; ``__call__`` = member_logits
    (the logits-function interface the attacks take). ``metadata`` is the dict saved at export.
    """

    def __init__(self, path: str, module):
        self.path = path
        self._module = module
        self.metadata = json.loads(module.metadata.numpy().decode("utf-8"))

    @property
    def size(self) -> int:
        return int(self.metadata["num_members"])

    @property
    def input_shape(self):
        return tuple(self.metadata["input_shape"])

    @property
    def dataset(self) -> str:
        return self.metadata["dataset"]

    def member_logits(self, x, training: bool = False):
        del training  # exported members always run in inference mode
        return self._module.serve(tf.convert_to_tensor(x, tf.float32))["member_logits"]

    def probabilities(self, x, training: bool = False):
        del training
        return self._module.serve(tf.convert_to_tensor(x, tf.float32))["probabilities"]

    def __call__(self, x, training: bool = False):
        return self.member_logits(x)

    def keras_ensemble(self, precision: str = "float32") -> models_lib.Ensemble:
        """The members rebuilt as Keras models (registry names in the metadata) under
        ``precision`` with the exported weights copied in: a ``models.Ensemble`` with the same
        ``member_logits`` / ``probabilities`` / ``metadata`` / ``path``. Needed for another
        precision, and for attacks that hook into the layers (SGM)."""
        sm, module, meta = self.path, self._module, self.metadata
        if not hasattr(module, "member_weights"):
            raise ValueError(f"{sm} predates per-member weight lists, so it can only be served in "
                             f"float32; re-export it (re-run its training command) or use float32.")
        if not meta.get("models"):
            raise ValueError(f"{sm} does not name its members' architectures (metadata 'models'), "
                             f"so it cannot be rebuilt in {precision}; serve it in float32.")
        built = models_lib.build_ensemble(list(meta["models"]), meta["input_shape"],
                                          meta["num_classes"], precision=precision)
        for member, weights in zip(built.members, module.member_weights):
            member.set_weights([w.numpy() for w in weights])
        built.path, built.metadata = sm, meta  # dataset / input_shape come from the metadata
        return built


def find_export(path: str) -> str:
    """Accepts a training out_dir or the saved_model dir itself; returns the saved_model dir."""
    for cand in (os.path.join(path, SAVED_MODEL_DIR), path):
        if os.path.isfile(os.path.join(cand, "saved_model.pb")):
            return cand
    raise FileNotFoundError(
        f"No tf_divtrain export found at {path!r} (looked for {path}/{SAVED_MODEL_DIR}/saved_model.pb "
        f"and {path}/saved_model.pb). Train it first with `python -m tf_divtrain.train "
        f"--out_dir={path} ...`, which exports on completion.")


def fingerprint(saved_model_dir: str) -> str:
    """sha256 (16 hex) of an export's graph and variable index: identifies the ensemble (the
    evaluation's adversarial cache and the analysis' resumable parts are keyed by it)."""
    h = hashlib.sha256()
    for rel in ("saved_model.pb", os.path.join("variables", "variables.index")):
        p = os.path.join(saved_model_dir, rel)
        h.update(rel.encode())
        if os.path.isfile(p):
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def dataset_mismatch(metadata: dict, dataset: str) -> str:
    """What keeps an export (its ``metadata``) from running on ``dataset``: "" when its dataset
    name, input shape and number of classes all match, else a sentence fragment naming the
    difference ("was trained on 'mnist', not 'cifar10'"). Callers add who and how to fix it."""
    shape, classes = data_lib.DATASETS[dataset][:2]
    if metadata.get("dataset") != dataset:
        return f"was trained on {metadata.get('dataset')!r}, not on {dataset!r}"
    if tuple(metadata.get("input_shape", ())) != tuple(shape):
        return f"takes inputs of shape {metadata.get('input_shape')}, but {dataset} images are {list(shape)}"
    if int(metadata.get("num_classes", -1)) != classes:
        return f"has {metadata.get('num_classes')} classes, {dataset} has {classes}"
    return ""


MEMBER_CHECK_ATOL = 1e-5  # |served - rebuilt| member logits allowed by :func:`with_members`


def with_members(ens, probe=None):
    """``ens`` (a :class:`LoadedEnsemble`) with its members as float32 Keras models, else ``ens``.

    Why: the served graph only computes the whole ensemble, so per-member work on it -- one
    member's input gradient, an attack on one member -- runs all N members and keeps one: N times
    the work. Measured on the cifar-paper Conv-4 T_Base (5 members, 100 images, under load): the
    member input gradients 8.1 s served vs 1.5 s rebuilt, PGD-5 on one member 8.2 s vs 1.6 s.

    The rebuilt members are used only if their logits equal the served graph's on ``probe``
    images (default: 8 fixed uniform-random images) to within ``MEMBER_CHECK_ATOL``: a member
    architecture whose code changed since the export (same weight shapes, other maths) is never
    substituted. Otherwise, or when the export cannot be rebuilt (older exports, architectures
    not in the registry), ``ens`` is returned and the reason is logged. Returns a
    ``models.Ensemble`` with the same ``member_logits`` / ``probabilities`` / ``metadata``.
    """
    import numpy as np
    from absl import logging

    if not isinstance(ens, LoadedEnsemble):
        return ens
    try:
        rebuilt = ens.keras_ensemble("float32")
    except (ValueError, KeyError, TypeError) as e:
        logging.info("%s: per-member work runs on the served graph (N x the cost): %s", ens.path, e)
        return ens
    if probe is None:
        probe = np.random.default_rng(0).random((8,) + ens.input_shape, dtype=np.float32)
    served, own = ens.member_logits(probe).numpy(), rebuilt.member_logits(probe).numpy()
    if served.shape != own.shape or not np.allclose(served, own, rtol=0.0, atol=MEMBER_CHECK_ATOL):
        diff = float(np.abs(served - own).max()) if served.shape == own.shape else float("inf")
        logging.warning("%s: its members rebuilt from the registry compute other logits than the "
                        "export (max |difference| %.3g), so the served graph is used", ens.path, diff)
        return ens
    return rebuilt


def load_ensemble(path: str, expect_dataset: Optional[str] = None, precision: str = "float32"):
    """Loads an export written by :func:`export_ensemble` (``path`` = out_dir or saved_model dir).

    ``precision="float32"`` (default) serves the exported float32 graph (a :class:`LoadedEnsemble`).
    Another precision rebuilds the members from the registry names in the metadata under that
    Keras dtype policy and copies the exported weights in: a ``models.Ensemble`` with the same
    ``member_logits`` / ``probabilities`` / ``metadata`` interface, computing in e.g. bfloat16.
    """
    precision_lib.check_precision(precision)
    sm = find_export(path)
    module = tf.saved_model.load(sm)
    if not hasattr(module, "metadata") or not hasattr(module, "serve"):
        raise ValueError(f"{sm} is a SavedModel but not a tf_divtrain export (no metadata/serve).")
    ens = LoadedEnsemble(sm, module)
    if expect_dataset is not None and ens.dataset != expect_dataset:
        raise ValueError(f"{sm} was trained on {ens.dataset!r}, not {expect_dataset!r}.")
    if precision == "float32":
        return ens
    return ens.keras_ensemble(precision)
