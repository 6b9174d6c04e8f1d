"""Training of the zoo nets with Caffe's own solver (pycaffe)."""
