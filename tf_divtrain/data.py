"""Real-data loading and `tf.data` training streams (paper §4.1).

Files: ``<data_dir>/<name>.npz`` with uint8 arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``.
``data_dir`` resolution: explicit argument (a flag) > env var ``TF_DIVTRAIN_DATA`` > the user cache
dir ``~/.cache/tf_divtrain/data``.

Images come out as float32 in [0, 1], NHWC (MNIST-like data gets a channel axis); labels int64.
Every epsilon in this project is on that [0, 1] pixel scale.

Training-stream sources (one batch of ``B`` *distinct* training images is split into
``len(sources)`` contiguous parts, sizes from :func:`split_sizes`; part ``k`` is transformed by
source ``k``):

* ``aug``   -- D': on-the-fly augmentation (:func:`augment`).
* ``noise`` -- D_noise: x + truncated-normal noise, clipped to [0, 1] (:func:`add_noise`).
* ``adv``   -- D_adv: the raw clean images are passed through unchanged; the training step replaces
  them by FGSM examples of the static model (they depend on a model, not on the data).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_divtrain import paper

DATASETS = {
    # name: (image shape HWC, classes, default D_noise epsilon from the paper)
    "mnist": ((28, 28, 1), 10, paper.NOISE_EPS["mnist"]),
    "fashion_mnist": ((28, 28, 1), 10, paper.NOISE_EPS["fashion_mnist"]),
    "cifar10": ((32, 32, 3), 10, paper.NOISE_EPS["cifar10"]),
}
SOURCES = ("aug", "noise", "adv")
ENV_VAR = "TF_DIVTRAIN_DATA"
_REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A data file is missing, corrupt or does not match the expected layout."""


@dataclasses.dataclass
class Dataset:
    """Arrays of one dataset, already scaled to float32 [0, 1] NHWC; labels int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    path: str = ""

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self):
        return DATASETS[self.name][1]


def check_dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}.")
    return name


def default_noise_eps(name: str) -> float:
    """The paper's D_noise epsilon: 0.3 for MNIST-like data, 0.09 for CIFAR-10."""
    return DATASETS[check_dataset_name(name)][2]


def resolve_data_dir(data_dir: Optional[str] = None) -> str:
    """Flag value if given, else ``$TF_DIVTRAIN_DATA``, else ``~/.cache/tf_divtrain/data``."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    if os.environ.get(ENV_VAR):
        return os.path.abspath(os.path.expanduser(os.environ[ENV_VAR]))
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(cache, "tf_divtrain", "data")


def _download(name: str, path: str) -> None:
    """Fetch the originals through keras.datasets and cache them as ``path`` (needs internet)."""
    import keras

    loader = getattr(keras.datasets, name)
    (x_train, y_train), (x_test, y_test) = loader.load_data()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".partial.npz"
    np.savez_compressed(tmp, x_train=x_train, y_train=y_train.reshape(-1),
                        x_test=x_test, y_test=y_test.reshape(-1))
    os.replace(tmp, path)


def _validate(name: str, path: str, arrays: dict) -> dict:
    shape, classes, _ = DATASETS[name]
    missing = [k for k in _REQUIRED_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; expected keys {list(_REQUIRED_KEYS)}.")
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8:
            raise DataError(f"{path}: x_{split} has dtype {x.dtype}, expected uint8 pixels 0..255.")
        raw_shape = x.shape
        if x.ndim == 3 and shape[2] == 1:
            x = x[..., None]
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise DataError(f"{path}: x_{split} has shape {raw_shape}, expected (n, {shape[0]}, "
                            f"{shape[1]}{', ' + str(shape[2]) if shape[2] != 1 else ''}) for {name}.")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{split} has dtype {y.dtype}, expected integer labels.")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"{path}: y_{split} has shape {y.shape}, expected (n,) labels.")
        if len(y) != len(x):
            raise DataError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels.")
        if len(y) == 0:
            raise DataError(f"{path}: the {split} split is empty.")
        if y.min() < 0 or y.max() >= classes:
            raise DataError(f"{path}: y_{split} labels span [{y.min()}, {y.max()}], expected 0..{classes - 1}.")
        out[f"x_{split}"], out[f"y_{split}"] = x, y.astype(np.int64)
    return out


def load_arrays(name: str, data_dir: Optional[str] = None, download: bool = False) -> dict:
    """Loads and validates the raw uint8 arrays of ``name`` (NHWC, labels int64)."""
    check_dataset_name(name)
    root = resolve_data_dir(data_dir)
    path = os.path.join(root, f"{name}.npz")
    if not os.path.isfile(path):
        if download:
            try:
                _download(name, path)
            except Exception as e:  # noqa: BLE001 -- any failure means: no file, say how to get one.
                raise DataError(f"{path} does not exist and fetching it through keras.datasets failed "
                                f"({type(e).__name__}: {e}). Place {name}.npz there (arrays x_train, "
                                f"y_train, x_test, y_test, uint8) or point --data_dir / ${ENV_VAR} at "
                                f"the folder holding it.") from e
        else:
            raise DataError(f"Dataset file not found: {path}. Point --data_dir (or ${ENV_VAR}) at the "
                            f"folder holding {name}.npz (arrays x_train, y_train, x_test, y_test, "
                            f"uint8), or pass --download on a machine with internet access.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 -- zip/npy errors come in many types.
        raise DataError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); "
                        f"re-create or re-download it.") from e
    return _validate(name, path, arrays)


def to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0)


def load_dataset(name: str, data_dir: Optional[str] = None, validation_size: int = 0,
                 test_size: Optional[int] = None, train_size: Optional[int] = None,
                 download: bool = False) -> Dataset:
    """Loads ``name`` as float32 [0, 1] NHWC.

    validation_size: the *last* ``validation_size`` training examples are held out as x_val/y_val.
    train_size: keep only the first ``train_size`` of the remaining training examples.
    test_size: keep the first ``test_size`` test examples (any size up to what the file holds).
    """
    raw = load_arrays(name, data_dir, download)
    path = os.path.join(resolve_data_dir(data_dir), f"{name}.npz")
    x_tr, y_tr = raw["x_train"], raw["y_train"]
    if validation_size < 0 or validation_size >= len(x_tr):
        raise DataError(f"validation_size={validation_size} must be in [0, {len(x_tr) - 1}] for {path}.")
    x_val = y_val = None
    if validation_size:
        x_val, y_val = to_float(x_tr[-validation_size:]), y_tr[-validation_size:]
        x_tr, y_tr = x_tr[:-validation_size], y_tr[:-validation_size]
    if train_size is not None:
        if train_size <= 0:
            raise DataError(f"train_size={train_size} must be positive.")
        x_tr, y_tr = x_tr[:train_size], y_tr[:train_size]
    x_te, y_te = raw["x_test"], raw["y_test"]
    if test_size is not None:
        if test_size <= 0:
            raise DataError(f"test_size={test_size} must be positive.")
        if test_size > len(x_te):
            raise DataError(f"test_size={test_size} but {path} holds only {len(x_te)} test images.")
        x_te, y_te = x_te[:test_size], y_te[:test_size]
    return Dataset(name, to_float(x_tr), y_tr, to_float(x_te), y_te, x_val, y_val, path)


# ----------------------------------------------------------------------------------------------
# Transformations (stateless: every random draw is a function of an explicit [2] int seed).

def augment(x: tf.Tensor, dataset: str, seed: tf.Tensor) -> tf.Tensor:
    """D' (paper §4.1): random shifts + crops, plus horizontal flips for CIFAR-10.

    MNIST / Fashion-MNIST: zero-pad 2 px on each side (28 -> 32), crop a random 28x28 window
    (a shift of up to +-2 px in each direction, vacated pixels are black). No flips (digits are
    not mirror-symmetric).
    CIFAR-10: zero-pad 4 px (32 -> 40), random 32x32 crop (shift up to +-4 px), then a horizontal
    flip with probability 1/2.
    Each image of the batch gets its own shift (and flip). x: float32 [B, H, W, C].
    """
    pad = 4 if dataset == "cifar10" else 2
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    dy = tf.random.stateless_uniform([b], seeds[0], 0, 2 * pad + 1, dtype=tf.int32)
    dx = tf.random.stateless_uniform([b], seeds[1], 0, 2 * pad + 1, dtype=tf.int32)
    # Gather the crop windows: rows dy..dy+h, cols dx..dx+w for every image.
    rows = dy[:, None] + tf.range(h)[None, :]  # [B, H]
    cols = dx[:, None] + tf.range(w)[None, :]  # [B, W]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W+2p, C]
    out = tf.gather(out, cols, axis=2, batch_dims=1)  # [B, H, W, C]
    if dataset == "cifar10":
        flip = tf.random.stateless_uniform([b], seeds[2]) < 0.5
        out = tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)
    return out


def add_noise(x: tf.Tensor, eps: float, seed: tf.Tensor) -> tf.Tensor:
    """D_noise (paper §4.1): x + n, n ~ N(0, sigma = eps/2) truncated at 2 sigma (so |n| <= eps),
    then clipped to [0, 1]."""
    noise = tf.random.stateless_truncated_normal(tf.shape(x), seed, stddev=eps / 2.0, dtype=x.dtype)
    return tf.clip_by_value(x + noise, 0.0, 1.0)


def split_sizes(batch_size: int, num_sources: int) -> list:
    """Sizes of the contiguous parts of a batch, one per source; the remainder goes to the first."""
    if num_sources < 1 or batch_size < num_sources:
        raise ValueError(f"batch_size={batch_size} cannot be split across {num_sources} sources.")
    base, rem = divmod(batch_size, num_sources)
    return [base + (1 if i < rem else 0) for i in range(num_sources)]


def check_sources(sources: Sequence[str]) -> tuple:
    sources = tuple(sources)
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise ValueError(f"Unknown stream source(s) {bad}; valid: {', '.join(SOURCES)}.")
    return sources


def train_stream(x: np.ndarray, y: np.ndarray, dataset: str, batch_size: int,
                 sources: Sequence[str] = ("aug",), noise_eps: Optional[float] = None, seed: int = 0,
                 start_step: int = 0) -> tf.data.Dataset:
    """Infinite, seeded stream of training batches ``(x [B,H,W,C] float32, y [B] int64)``.

    Rule for one batch: ``B`` distinct images are drawn (shuffled without replacement within an
    epoch, reshuffled each epoch with ``seed``); the batch is cut into contiguous parts of sizes
    ``split_sizes(B, len(sources))`` and part k is transformed by ``sources[k]`` (see module doc).
    Random draws are stateless functions of ``(seed, step)``, so the stream is identical for a given
    seed, and ``start_step`` resumes it exactly where a run stopped (batches before it are skipped
    before any transformation is applied).
    """
    sources = check_sources(sources)
    sizes = split_sizes(batch_size, len(sources))
    if noise_eps is None:
        noise_eps = default_noise_eps(dataset)
    x_u8 = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8) if x.dtype != np.uint8 else x
    ds = tf.data.Dataset.from_tensor_slices((x_u8, y.astype(np.int64)))
    ds = ds.shuffle(len(x_u8), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=True).enumerate().skip(start_step)

    def transform(step, batch):
        xb, yb = batch
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        return transform_batch(tf.cast(xb, tf.float32) / 255.0, sources, dataset, noise_eps,
                               step_seed, sizes), yb

    ds = ds.map(_no_autograph(transform), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def transform_batch(x: tf.Tensor, sources: Sequence[str], dataset: str, noise_eps: float, seed,
                    sizes: Optional[Sequence[int]] = None) -> tf.Tensor:
    """One batch's rule: contiguous parts of ``sizes`` (default :func:`split_sizes`), part k
    transformed by ``sources[k]`` with its own seed split from the [2] int64 ``seed``."""
    sources = check_sources(sources)
    if sizes is None:
        n = x.shape[0]
        if n is not None:
            sizes = split_sizes(int(n), len(sources))
        else:  # dynamic batch: the same rule as split_sizes, in graph ops
            b, k = tf.shape(x)[0], len(sources)
            sizes = b // k + tf.cast(tf.range(k) < b % k, tf.int32)
    parts = tf.split(x, sizes if isinstance(sizes, tf.Tensor) else list(sizes), axis=0)
    seeds = tf.random.experimental.stateless_split(seed, len(sources))
    out = []
    for k, (src, part) in enumerate(zip(sources, parts)):
        if src == "aug":
            part = augment(part, dataset, seeds[k])
        elif src == "noise":
            part = add_noise(part, noise_eps, seeds[k])
        out.append(part)
    return tf.concat(out, axis=0)


def _call_seed(seed: Optional[int]) -> tf.Tensor:
    """A fresh [2] int64 seed per call of a ``Dataset.map`` function (op-seeded: a sequential
    map with a fixed ``seed`` and global seed gives the same stream every run)."""
    return tf.random.uniform([2], maxval=2 ** 31 - 1, dtype=tf.int64, seed=seed)


def _no_autograph(fn):
    """``Dataset.map`` converts its function with autograph unless told not to; these map functions
    branch only on Python values (dataset names, static shapes and dtypes), so the conversion
    (about 2 s the first time in a process) changes nothing but the time."""
    return tf.autograph.experimental.do_not_convert(fn)


def _as_batch(x):
    x = tf.convert_to_tensor(x)
    if x.dtype == tf.uint8:
        x = tf.cast(x, tf.float32) / 255.0
    single = x.shape.rank == 3
    return (x[None] if single else x), single


def augment_map(dataset: str = "mnist", seed: Optional[int] = None):
    """D' as a ``tf.data`` map: ``ds.map(augment_map("mnist"))`` on ``(images, labels)``.

    Images may be one image [H, W, C] or a batch [B, H, W, C], float32 in [0, 1] or uint8.
    Each call draws its own shifts (and flips, CIFAR-10); see :func:`augment`."""
    check_dataset_name(dataset)

    def fn(x, y):
        xb, single = _as_batch(x)
        out = augment(xb, dataset, _call_seed(seed))
        return (out[0] if single else out), y

    return _no_autograph(fn)


def noise_map(eps: float, seed: Optional[int] = None):
    """D_noise as a ``tf.data`` map: x + truncated-normal noise (|n| <= eps), clipped to [0, 1]."""
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"noise eps={eps} is outside [0, 1] (pixel scale).")

    def fn(x, y):
        xb, single = _as_batch(x)
        out = add_noise(xb, eps, _call_seed(seed))
        return (out[0] if single else out), y

    return _no_autograph(fn)


def diversity_map(dataset: str = "mnist", noise_eps: Optional[float] = None,
                  sources: Sequence[str] = ("aug", "noise"), seed: Optional[int] = None):
    """The paper's {D', D_noise} batch (§4.1) as a ``tf.data`` map on *batched* data.

    ``ds.batch(B, drop_remainder=True).map(diversity_map("mnist"))``: the first half of each batch
    is augmented (D'), the second half gets noise of ``noise_eps`` (default: the paper's 0.3 for
    MNIST-like data, 0.09 for CIFAR-10) -- the same rule as the CLI's ``train_stream``, which
    additionally makes every draw a function of (seed, step) for exact resumption.
    """
    sources = check_sources(sources)
    if "adv" in sources:
        raise ValueError("D_adv depends on a static model, not on the data; craft it in the step.")
    eps = default_noise_eps(dataset) if noise_eps is None else noise_eps

    def fn(x, y):
        xb, _ = _as_batch(x)
        return transform_batch(xb, sources, dataset, eps, _call_seed(seed)), y

    return _no_autograph(fn)
