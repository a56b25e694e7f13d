"""Experiment loggers: CSV, TensorBoard, Weights & Biases and in-memory."""
