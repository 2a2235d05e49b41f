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

# Table 2 (accuracy %, "eps1 / eps2" pairs in ATTACK_ORDER), for side-by-side display.
TABLE2_ACCURACY = {
    "mnist_conv3": {
        "T_Base": (99.4, [(91.4, 9.7), (92.0, 9.7), (86.1, 0.7), (85.7, 2.6), (92.3, 9.7)]),
        "T_Div": (99.2, [(97.1, 34.3), (97.8, 30.6), (97.6, 20.4), (96.9, 16.9), (97.1, 35.9)]),
        "T_Ens": (99.4, [(98.9, 61.3), (99.0, 42.5), (99.0, 56.3), (98.8, 45.9), (98.8, 44.8)]),
        "T_Ens+Div": (99.3, [(98.9, 73.7), (99.0, 79.3), (99.0, 87.0), (98.8, 61.4), (98.2, 71.3)]),
    },
    "cifar10_conv4": {
        "T_Base": (85.1, [(14.1, 7.8), (16.8, 3.2), (9.5, 2.8), (9.0, 7.4), (8.8, 5.9)]),
        "T_Div": (82.4, [(45.3, 14.7), (56.0, 15.1), (51.4, 5.6), (35.0, 7.5), (43.9, 11.6)]),
        "T_Ens": (82.9, [(64.6, 43.2), (70.5, 54.9), (69.4, 54.3), (59.9, 38.6), (62.1, 42.8)]),
        "T_Ens+Div": (80.5, [(68.5, 54.2), (72.0, 66.7), (72.4, 66.3), (66.9, 55.4), (66.9, 54.3)]),
    },
    "cifar10_resnet20": {
        "T_Base": (88.9, [(28.8, 13.1), (25.7, 7.1), (8.6, 3.2), (10.2, 6.3), (18.7, 10.2)]),
        "T_Div": (84.0, [(58.4, 32.4), (64.3, 23.9), (67.7, 44.2), (50.0, 11.7), (53.2, 25.4)]),
        "T_Ens": (87.9, [(70.9, 44.3), (77.2, 50.9), (79.6, 65.5), (66.5, 30.5), (65.9, 37.8)]),
        "T_Ens+Div": (84.7, [(74.9, 50.7), (78.1, 57.6), (79.7, 71.5), (74.1, 47.4), (71.3, 46.3)]),
    },
    "cifar10_mix": {
        "T_Base": (89.7, [(27.9, 9.6), (30.9, 6.1), (13.9, 3.1), (10.6, 5.9), (26.0, 7.6)]),
        "T_Div": (88.2, [(55.8, 23.2), (65.1, 25.0), (61.8, 19.7), (42.4, 7.1), (55.9, 22.2)]),
        "T_Ens": (87.4, [(72.6, 49.6), (76.9, 58.4), (77.1, 61.4), (66.9, 27.9), (70.0, 47.1)]),
        "T_Ens+Div": (86.4, [(73.4, 52.2), (77.9, 64.1), (77.2, 67.5), (69.2, 39.7), (71.8, 50.4)]),
    },
}

# Training length (epochs) per Table 2 row (§4.1; the paper gives none for MIX: ResNet-20's 40).
TABLE2_EPOCHS = {"mnist_conv3": 10, "cifar10_conv4": 20, "cifar10_resnet20": 40, "cifar10_mix": 40}
TEST_EXAMPLES = {"mnist": 10000, "cifar10": 10000}

# Fig. 5's GAAS orders (§4.4); 25 is not a Hadamard order (report.analyses.hadamard_note).
GAAS_K = (4, 25, 36, 64)
# Table 2's attacks in its column order (§4.1), and their names in the paper.
TABLE2_ATTACKS = ("fgsm", "rfgsm", "ifgsm", "mifgsm", "pgd_cw")
ATTACK_NAMES = {"fgsm": "FGSM", "rfgsm": "R-FGSM", "ifgsm": "I-FGSM", "mifgsm": "MI-FGSM",
                "pgd_cw": "PGD-CW"}
