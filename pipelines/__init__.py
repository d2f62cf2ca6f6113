"""Beam transforms, pipeline construction from a config, and the ``thresher`` CLI."""
