"""pda-repro: Prediction Difference Analysis, fast and Caffe-faithful.

from pda_repro import load_model, explain
net = load_model("mnist", backend="torch")
res = explain(net, image, method="epda", window=4, outer=8)
"""

__version__ = "0.1.0"

from pda_repro.explain import Explanation, explain, load_model  # noqa: E402

__all__ = ["Explanation", "explain", "load_model", "__version__"]
