"""Exact incremental inference for window methods: the graph (graph.py), the Caffe graph builder
(caffe_graph.py), the engine (engine.py) and the multiply-add count behind the ideal speed-up (cost.py)."""
