"""Models and data: bases and tokenizers, chat templates, datasets, the built-in base, checkpoints."""
