"""``evaluate(strategy="mirrored")`` on 2 logical CPUs == ``strategy="default"``, bitwise.

Run as a separate process: logical devices must be configured before TensorFlow initialises.
Arguments: SURROGATE_EXPORT TARGET_EXPORT DATA_DIR WORK_DIR. Prints one JSON line; the test
(tests/test_eval_strategy.py) asserts on it.
"""
import json
import os
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tf_divtrain import attacks, data, evaluation, export  # noqa: E402
from tf_divtrain.evaluation import distributed  # noqa: E402

sur, tgt, data_dir, work = sys.argv[1:5]
kw = dict(dataset="mnist", data_dir=data_dir, eps=[0.1], attacks=["fgsm", "pgd_cw"],
          attack_options={"pgd_cw": {"nb_iter": 3}}, num_examples=36, batch_size=8, seed=3,
          progress=False)
# 36 images in batches of 8: 5 batches on 2 replicas, so the last step pads replica 1.
ref = evaluation.evaluate(sur, [("T", tgt)], cache_dir=os.path.join(work, "c0"), **kw)
got = evaluation.evaluate(sur, [("T", tgt)], cache_dir=os.path.join(work, "c1"), strategy="mirrored",
                          **kw)
out = {"strategy": got.get("crafting_strategy"), "default_has_no_strategy": "crafting_strategy" not in ref,
       "cells": {}, "per_example_equal": [a["per_example"] == b["per_example"]
                                          for a, b in zip(ref["rows"], got["rows"])]}
for a in kw["attacks"]:
    p0, p1 = ref["crafting"][a]["0.1"]["path"], got["crafting"][a]["0.1"]["path"]
    out["cells"][a] = {"same_key": os.path.basename(p0) == os.path.basename(p1),
                       "bitwise": bool(np.array_equal(np.load(p0), np.load(p1)))}

# Randomness of another kind (M-DI²-FGSM: one input-diversity transform per batch and step),
# crafted by the replicas directly, against the single-process loop. (M-PGD's restarts and SGM on
# a ResNet-20 export were checked the same way by hand, bitwise equal; left out for time.)
ds = data.load_dataset("mnist", data_dir, test_size=36)
x, y = ds.x_test, ds.y_test
strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
    scoped = export.load_ensemble(sur)
plain = export.load_ensemble(sur)
for name, opts in (("mdi2fgsm", {"nb_iter": 2}),):
    r0 = evaluation.craft(attacks.make_attack(name, plain, 0.1, **opts), x, y, 8, 3, progress=False)
    r1 = distributed.craft_distributed(attacks.make_attack(name, scoped, 0.1, **opts), x, y, 8, 3,
                                       strategy, progress=False)
    out["cells"][name] = {"bitwise": bool(np.array_equal(r0, r1)),
                          "moved": float(np.abs(r0 - x).max())}

# A TF_CONFIG that is not JSON: a one-sentence EvaluationError, nothing crafted.
os.environ["TF_CONFIG"] = "{not json"
try:
    evaluation.evaluate(sur, [("T", tgt)], cache_dir=os.path.join(work, "c2"),
                        strategy="multi_worker", **kw)
    out["bad_tf_config"] = None
except evaluation.EvaluationError as e:
    out["bad_tf_config"] = str(e)
out["c2_exists"] = os.path.exists(os.path.join(work, "c2"))
print("RESULT " + json.dumps(out))
