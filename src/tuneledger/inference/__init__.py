"""Inference: the one decoding path, a loaded version answering prompts, and evaluation."""
