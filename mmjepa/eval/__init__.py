"""Evaluation and inference on trained models: linear probes, masked-span filling."""
