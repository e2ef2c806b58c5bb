"""Offline inference: SavedModel or checkpoint + feature files -> results JSON."""
