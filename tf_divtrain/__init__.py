"""tf_divtrain: Diversity Training (Kariyappa & Qureshi, 2019) for TensorFlow 2 / Keras 3.

Modules: data, models, gal, training (+ train CLI), export, attacks, evaluation (+ evaluate CLI),
analysis (+ analyze CLI), report. Import the one you need; nothing heavy happens on package import.
"""

__version__ = "0.1.0"
