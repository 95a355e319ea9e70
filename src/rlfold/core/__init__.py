"""Core layer: types, registry, config models, masked tensor utilities."""
