"""Code generated at set-up (caffe_pb2 from caffe.proto)."""
