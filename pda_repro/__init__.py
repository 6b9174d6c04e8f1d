"""pda-repro: Prediction Difference Analysis, fast and Caffe-faithful."""
__version__ = "0.1.0"
