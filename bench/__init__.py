"""Benchmarks for tff-k8s (issue 6): our federation against Flower, raw gRPC and TFF's simulation."""
