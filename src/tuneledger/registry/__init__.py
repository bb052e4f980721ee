"""The model registry: versions and stages on git tags (gto), gated promotion, rollback, fetch."""
