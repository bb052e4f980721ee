"""Loading a version package for inference: verify every byte first, never unpickle, one device."""

from __future__ import annotations

from pathlib import Path

from tuneledger import modeling
from tuneledger.errors import TuneLedgerError
from tuneledger.hashing import tree_digest
from tuneledger.layout import BASE_DIR, base_path_for
from tuneledger.package import metadata as metadata_format
from tuneledger.package.safetensors_io import read_header
from tuneledger.package.verify import verify


def base_candidates(package: Path, explicit: Path | None) -> list[Path]:
    """Where a package's base model may be: --base, the `<package>.base` sibling that `fetch`
    writes, and the repository's models/base."""
    if explicit is not None:
        return [Path(explicit)]
    return [base_path_for(package), BASE_DIR]


def find_base(package: Path, meta: dict, explicit: Path | None = None) -> Path:
    """A base model directory whose SHA-256 digest equals the one the package was trained on."""
    expected = meta["base_model"]["sha256"]
    tried = []
    for candidate in base_candidates(package, explicit):
        if not candidate.is_dir():
            tried.append(f"{candidate} (missing)")
            continue
        digest, _ = tree_digest(candidate)
        if digest == expected:
            return candidate
        tried.append(f"{candidate} (sha256 {digest[:12]}…, a different base)")
    raise TuneLedgerError(
        f"base model {meta['base_model']['id']!r} (sha256 {expected[:12]}…) not found: tried "
        f"{'; '.join(tried)}; pass --base DIR, run `dvc pull models/base`, or `tuneledger fetch --with-base`"
    )


def load(
    path: str | Path,
    device: str | None = None,
    base: str | Path | None = None,
    manifest: str | Path | None = None,
):
    """Model and tokenizer of a verified package (merged weights if shipped, else base + adapter)."""
    from peft import PeftModel

    package = Path(path)
    verify(package, Path(manifest) if manifest else None)  # SHA-256 before anything is deserialized
    meta = metadata_format.read(package / "metadata.json")
    tokenizer = modeling.load_tokenizer(package)
    device = modeling.pick_device(device)
    if (package / "merged").is_dir():
        return modeling.load_base(package / "merged", device=device), tokenizer
    read_header(package / "adapter_model.safetensors")
    base_dir = find_base(package, meta, Path(base) if base else None)
    model = modeling.load_base(base_dir, device=device)
    model = PeftModel.from_pretrained(model, str(package), is_trainable=False)
    return model.to(device).eval(), tokenizer
