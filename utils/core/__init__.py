"""Foundations that every layer of the project builds on: registries, user errors, atomic writes."""
