"""The OpenAI-compatible API (the subset vLLM and TGI users point their clients at), under /v1."""
