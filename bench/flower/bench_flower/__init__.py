"""Minimal Flower app for the tff-k8s benchmark (bench/runners/flower.py drives it)."""
