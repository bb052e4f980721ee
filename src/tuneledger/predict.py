"""Answering prompts with a verified package, within the bounds of its signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneledger.generation import generate
from tuneledger.package import metadata as metadata_format
from tuneledger.package import signature as signature_format
from tuneledger.package.loader import load


@dataclass
class Predictor:
    model: Any
    tokenizer: Any
    signature: dict
    version: dict  # content id and other identity facts of the loaded package

    @classmethod
    def open(
        cls, package: Path, base: Path | None = None, device: str | None = None, manifest: Path | None = None
    ) -> Predictor:
        model, tokenizer = load(package, device=device, base=base, manifest=manifest)
        meta = metadata_format.read(Path(package) / "metadata.json")
        sig = signature_format.read(Path(package) / "signature.json")
        return cls(model, tokenizer, sig, {"content_id": meta["content_id"]})

    def check(self, prompt: Any, params: dict[str, Any]) -> dict[str, Any]:
        """Signature check of a request, including the prompt's length in tokens."""
        resolved = signature_format.check_request(self.signature, prompt, params)
        signature_format.check_prompt_tokens(self.signature, len(self.tokenizer(prompt)["input_ids"]))
        return resolved

    def generate(self, prompt: str, resolved: dict[str, Any]) -> str:
        """Generation for a request that already passed `check`."""
        new_tokens, temperature = resolved["max_new_tokens"], resolved["temperature"]
        return generate(self.model, self.tokenizer, [prompt], new_tokens, temperature)[0]

    def predict(self, prompt: Any, params: dict[str, Any] | None = None) -> str:
        return self.generate(prompt, self.check(prompt, params or {}))
