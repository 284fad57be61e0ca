"""The model presets of ``configs/`` by group, in the order of docs/presets.md: the one list of them.

Plain data with no imports, so that benchmarks/results.py (the results table's rows and order) and the tests that
build every preset (tests/test_models.py) read the same lists.
"""

from __future__ import annotations

# the architectures from the notebooks, in the catalogue's order
CATALOGUE_PRESETS = [
    "linear",
    "mlp_20",
    "mlp_40_20",
    "mlp_128_62",
    "mlp_128_64",
    "mlp_100_100_linear",
    "lenet_bn1",
    "lenet5",
    "small_cnn",
    "convnet_pool2",
    "convnet",
    "vit",
    "vit_encoder",
]
STRONG_PRESETS = ["mlp_strong", "cnn_strong", "vit_strong"]
FRONTIER_PRESETS = ["cnn_frontier", "mlp_frontier", "vit_frontier", "resnet_frontier"]
ALL_PRESETS = CATALOGUE_PRESETS + STRONG_PRESETS + FRONTIER_PRESETS
