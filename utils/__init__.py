"""Shared infrastructure: argument parsing, training loop, buffer, metrics, results."""
