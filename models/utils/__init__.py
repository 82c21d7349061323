"""Shared pieces of the models: the ``ContinualModel`` base and the normalisation layers."""
