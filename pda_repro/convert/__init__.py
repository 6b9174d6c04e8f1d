"""Converters of pretrained models into Caffe deploy nets (prototxt + caffemodel)."""
