"""The paper's settings in one place (Kariyappa & Qureshi 2019, §4.1 and Fig 5).

Every epsilon is on the [0, 1] pixel scale. Tools import these instead of repeating the numbers.
"""

# Table 2's two perturbation sizes (small / large) per dataset: transfer evaluation, white-box
# check and member-to-member transferability.
TABLE2_EPS = {"mnist": (0.1, 0.3), "fashion_mnist": (0.1, 0.3), "cifar10": (0.03, 0.09)}

# Fig 5's GAAS epsilons for CIFAR-10; MNIST-like data gets 0.1 / 0.2 / 0.3 on the same grid.
GAAS_EPS = {"mnist": (0.1, 0.2, 0.3), "fashion_mnist": (0.1, 0.2, 0.3), "cifar10": (0.03, 0.06, 0.09)}

# D_noise epsilon of §4.1 (also the default max D_adv epsilon): the large Table 2 epsilon.
NOISE_EPS = {name: eps[-1] for name, eps in TABLE2_EPS.items()}
