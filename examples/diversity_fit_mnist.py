"""Diversity Training of three of *your own* Keras models on MNIST with ``fit()``.

    TF_DIVTRAIN_DATA=/path/to/data python examples/diversity_fit_mnist.py [--epochs=2]

Trains the same three members (a functional CNN, a Sequential CNN and a subclassed MLP, all
ending in logits) twice from the same initial weights: with GAL (lambda = 0.5, Eq 9) and without
(lambda = 0, independent training), on the paper's {D', D_noise} input, then prints clean accuracy
and the mean coherence (Eq 7: max pairwise cosine of the members' input gradients) of both.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_divtrain as td  # noqa: E402


def leaky():
    return keras.layers.LeakyReLU(negative_slope=0.2)  # dense input gradients (paper §3.4: no ReLU)


def functional_cnn():
    inp = keras.Input((28, 28, 1))
    h = leaky()(keras.layers.Conv2D(16, 3)(inp))
    h = keras.layers.MaxPooling2D(2)(h)
    h = leaky()(keras.layers.Dense(128)(keras.layers.Flatten()(h)))
    return keras.Model(inp, keras.layers.Dense(10)(h), name="functional_cnn")


def sequential_cnn():
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 5, strides=2), leaky(),
                             keras.layers.Conv2D(16, 3, strides=2), leaky(), keras.layers.Flatten(),
                             keras.layers.Dense(10)], name="sequential_cnn")


@keras.saving.register_keras_serializable(package="examples")
class MLP(keras.Model):
    """A subclassed member; register it as serializable to save the ensemble as .keras."""

    def __init__(self, width=256, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.flat, self.hidden, self.act = keras.layers.Flatten(), keras.layers.Dense(width), leaky()
        self.logits = keras.layers.Dense(10)

    def call(self, x):
        return self.logits(self.act(self.hidden(self.flat(x))))

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train_examples", type=int, default=10000)
    p.add_argument("--test_examples", type=int, default=1000)
    p.add_argument("--gal_lambda", type=float, default=0.5)
    p.add_argument("--batch_size", type=int, default=128)
    args = p.parse_args()

    mnist = td.load_dataset("mnist", train_size=args.train_examples, test_size=args.test_examples)
    keras.utils.set_random_seed(0)
    members = [functional_cnn(), sequential_cnn(), MLP()]
    for m in members:
        m(tf.zeros((1, 28, 28, 1)))  # builds the subclassed member's weights
    initial = [m.get_weights() for m in members]
    # {D', D_noise}: half of every batch augmented, half with noise of eps = 0.3 (paper §4.1).
    train = (tf.data.Dataset.from_tensor_slices((mnist.x_train, mnist.y_train))
             .shuffle(len(mnist.x_train), seed=0).batch(args.batch_size, drop_remainder=True)
             .map(td.diversity_map("mnist", seed=0)).prefetch(tf.data.AUTOTUNE))

    for lam in (args.gal_lambda, 0.0):
        for m, w in zip(members, initial):
            m.set_weights(w)  # both runs start from the same weights
        ens = td.DiversityEnsemble(members, gal_lambda=lam, input_shape=(28, 28, 1))
        ens.compile(optimizer=keras.optimizers.Adam(1e-3))
        ens.fit(train, epochs=args.epochs, verbose=2)
        acc = ens.evaluate(mnist.x_test, mnist.y_test, return_dict=True, verbose=0)["accuracy"]
        coh = td.coherence_values(ens, mnist.x_test, mnist.y_test).mean()
        print(f"lambda={lam:g}: clean accuracy {acc:.4f}, mean coherence {coh:.3f}")


if __name__ == "__main__":
    main()
