"""Loading a version package for inference: verify every byte first, never unpickle, one device.

What is loaded is a private copy of the package and of its base, hashed after copying (see
verify.verified_copy): a file swapped after the check is never the file that gets loaded.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.git import git_process
from tuneledger.core.hashing import tree_digest
from tuneledger.core.layout import BASE_DIR, base_path_for, manifest_path_for
from tuneledger.models import modeling
from tuneledger.package import manifest, metadata, signature
from tuneledger.package.files import ADAPTER_WEIGHTS, GENERATION_CONFIG, METADATA, SIGNATURE
from tuneledger.package.safetensors_io import open_checked
from tuneledger.package.verify import copy_private, private_directory, verified_copy


def base_candidates(package: Path, explicit: Path | None) -> list[Path]:
    """Where a package's base model may be: --base, the `<package>.base` sibling that `fetch`
    writes, and the repository's models/base."""
    if explicit is not None:
        return [Path(explicit)]
    return [base_path_for(package), BASE_DIR]


@contextlib.contextmanager
def verified_base(package: Path, meta: dict, explicit: Path | None = None) -> Iterator[Path]:
    """A private copy of the base model whose SHA-256 digest equals the one the package was
    trained on. Symlinks are followed (DVC may link its cache into models/base); the copy holds
    their bytes (read-only files as hard links to the files opened), and it is the copy that is
    hashed and loaded."""
    expected = meta["base_model"]["sha256"]
    tried = []
    for candidate in base_candidates(package, explicit):
        if not candidate.is_dir():
            tried.append(f"{candidate} (missing)")
            continue
        # Beside the candidate, so that the weights DVC keeps read-only are linked, not copied: a
        # base costs no second copy on each load.
        with private_directory("tuneledger-base-", near=candidate.resolve().parent) as holder:
            copy = holder / "base"
            skipped = copy_private(candidate, copy, follow_symlinks=True, link_read_only=True)
            digest, _ = tree_digest(copy)
            if digest == expected and not skipped:
                yield copy
                return
        if skipped:
            tried.append(f"{candidate} ({skipped[0][0]} is {skipped[0][1]})")
        else:
            tried.append(f"{candidate} (sha256 {digest[:12]}…, a different base)")
    raise TuneLedgerError(
        f"base model {meta['base_model']['id']!r} (sha256 {expected[:12]}…) not found: tried "
        f"{'; '.join(tried)}; pass --base DIR, run `dvc pull models/base`, or `tuneledger fetch --with-base`"
    )


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess | None:
    try:
        return git_process(*args, cwd=cwd)
    except TuneLedgerError:  # no git: nothing committed to compare with
        return None


def committed_manifest_warning(manifest_file: Path) -> str | None:
    """A one-line warning when `manifest_file` is committed in a git repository and the working
    tree's copy says something else than HEAD's: the package is then checked against a manifest
    that nobody committed."""
    manifest_file = Path(manifest_file)
    if not manifest_file.is_file():
        return None
    top = _git("rev-parse", "--show-toplevel", cwd=manifest_file.resolve().parent)
    if top is None or top.returncode != 0:
        return None
    root = Path(top.stdout.strip())
    relative = manifest_file.resolve().relative_to(root.resolve()).as_posix()
    committed = _git("show", f"HEAD:{relative}", cwd=root)
    if committed is None or committed.returncode != 0:
        return None  # not tracked, or no commit yet: there is no committed manifest to compare with
    try:
        working = manifest.read(manifest_file)
        same = manifest.parse(committed.stdout, Path(f"HEAD:{relative}")) == working
    except TuneLedgerError:
        same = False
    if same:
        return None
    return (
        f"warning: {manifest_file} differs from the committed HEAD:{relative}; the package is checked "
        f"against the working-tree manifest: commit it, or restore it with `git checkout HEAD -- {relative}`"
    )


@dataclass(frozen=True)
class LoadedPackage:
    """A loaded version and every fact serving needs from it, all read from the verified copy."""

    model: Any
    tokenizer: Any
    metadata: dict
    signature: dict
    eos_token_ids: list[int]


def load(
    path: str | Path,
    device: str | None = None,
    base: str | Path | None = None,
    manifest: str | Path | None = None,
):
    """Model and tokenizer of a verified package (merged weights if shipped, else base + adapter)."""
    loaded = load_package(path, device=device, base=base, manifest=manifest)
    return loaded.model, loaded.tokenizer


def load_package(
    path: str | Path,
    device: str | None = None,
    base: str | Path | None = None,
    manifest: str | Path | None = None,
    onto: SharedBase | None = None,
) -> LoadedPackage:
    """Load a verified package; its metadata, signature and end-of-answer ids come from the same
    private copy whose bytes were checked, never from the package directory again.

    With `onto`, the package's adapter joins the adapters already on that shared base, named by the
    manifest's content id; a package trained on another base is refused."""
    from rich.markup import escape

    from tuneledger.core.progress import say

    package = Path(path)
    manifest_file = Path(manifest) if manifest else manifest_path_for(package)
    warning = committed_manifest_warning(manifest_file)
    if warning:
        say(escape(warning))
    with verified_copy(package, manifest_file) as (checked, recorded):  # SHA-256 of the very bytes loaded
        meta = metadata.read(checked / METADATA)
        tokenizer = modeling.load_tokenizer(checked)
        if onto is None:
            model = _load_model(
                checked, package, meta, modeling.pick_device(device), Path(base) if base else None
            )
        else:
            model = onto.add(checked, meta, recorded.content_id)
        return LoadedPackage(
            model,
            tokenizer,
            meta,
            signature.read(checked / SIGNATURE),
            _eos_token_ids(checked, tokenizer),
        )


def _load_model(checked: Path, package: Path, meta: dict, device: str, base: Path | None):
    from peft import PeftModel

    if (checked / "merged").is_dir():
        return modeling.load_base(checked / "merged", device=device)
    with open_checked(checked / ADAPTER_WEIGHTS):  # the library's header checks, one line if refused
        pass
    with verified_base(package, meta, base) as base_dir:
        model = modeling.load_base(base_dir, device=device)
    model = PeftModel.from_pretrained(model, str(checked), is_trainable=False)
    return model.to(device).eval()


class ForeignBase(TuneLedgerError):
    """A version trained on another base than the one a shared base holds."""


class SharedBase:
    """One base model in memory carrying the adapters of several versions (peft's multi-adapter
    model), each named by its version's content id, for mixed-adapter batches."""

    def __init__(self, package: Path, meta: dict, device: str | None = None, base: Path | None = None):
        self.device = modeling.pick_device(device)
        self.sha256 = meta["base_model"]["sha256"]
        self.base_id = meta["base_model"]["id"]
        with verified_base(Path(package), meta, base) as base_dir:
            self.base = modeling.load_base(base_dir, device=self.device)
        self.model = None  # the PeftModel, once the first adapter is on

    def add(self, checked: Path, meta: dict, name: str):
        """Put a verified package's adapter on the base, under `name` (its content id)."""
        from peft import PeftModel

        if meta["base_model"]["sha256"] != self.sha256:
            raise ForeignBase(
                f"{meta['content_id'][:12]} was trained on base {meta['base_model']['id']!r} (sha256 "
                f"{meta['base_model']['sha256'][:12]}…), not this server's base {self.base_id!r} (sha256 "
                f"{self.sha256[:12]}…); serve it from a server of its own"
            )
        with open_checked(checked / ADAPTER_WEIGHTS):  # the library's header checks, one line if refused
            pass
        if self.model is None:
            self.model = PeftModel.from_pretrained(
                self.base, str(checked), adapter_name=name, is_trainable=False
            )
            self.model.to(self.device).eval()
        else:
            self.model.load_adapter(str(checked), adapter_name=name, is_trainable=False)
        return self.model

    def remove(self, content_id: str) -> None:
        self.model.delete_adapter(content_id)


def _eos_token_ids(checked: Path, tokenizer) -> list[int]:
    """The ids that end an answer: those the package's generation_config.json lists (a chat
    package's include its template's end-of-turn token), else the tokenizer's own."""
    from tuneledger.models.chat import eos_token_ids

    config = checked / GENERATION_CONFIG
    if not config.is_file():
        return eos_token_ids(tokenizer)
    eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
    return [eos] if isinstance(eos, int) else list(eos or [])
