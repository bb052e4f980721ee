"""Serving the registry's prod version over HTTP, with an optional shadow candidate."""
