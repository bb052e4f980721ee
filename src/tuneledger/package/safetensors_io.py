"""Safetensors files read defensively: the header is checked before any tensor is allocated."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from tuneledger.errors import TuneLedgerError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def read_header(path: Path) -> tuple[dict, int]:
    """The tensor table and the byte offset of the data section, after checking every entry."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise TuneLedgerError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise TuneLedgerError(
                f"{path}: corrupt safetensors header: declares {length} header bytes, file has {size}"
            )
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise TuneLedgerError(f"{path}: corrupt safetensors header: not valid JSON") from None
    if not isinstance(header, dict):
        raise TuneLedgerError(f"{path}: corrupt safetensors header: not a JSON object")
    _check_table(path, header, data_bytes=size - 8 - length)
    return header, 8 + length


def _check_table(path: Path, header: dict, data_bytes: int) -> None:
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise TuneLedgerError(
                    f"{path}: corrupt safetensors header: __metadata__ must map strings to strings"
                )
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise TuneLedgerError(
                f"{path}: corrupt safetensors header: tensor {name!r} lacks dtype/shape/offsets"
            ) from None
        if dtype not in DTYPE_BYTES:
            raise TuneLedgerError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or not all(
            isinstance(o, int) for o in (begin, end)
        ):
            raise TuneLedgerError(f"{path}: tensor {name!r}: shape and offsets must be non-negative integers")
        numel = 1
        for dim in shape:
            numel *= dim
        if not 0 <= begin <= end <= data_bytes:
            raise TuneLedgerError(
                f"{path}: tensor {name!r}: offsets {begin}..{end} outside the {data_bytes}-byte data section"
            )
        if end - begin != numel * DTYPE_BYTES[dtype]:
            raise TuneLedgerError(
                f"{path}: tensor {name!r}: {dtype} {shape} needs {numel * DTYPE_BYTES[dtype]} bytes, "
                f"offsets give {end - begin} (dtype or shape mismatch)"
            )
        spans.append((begin, end, name))
    spans.sort()
    for (_, first_end, first), (second_begin, _, second) in zip(spans, spans[1:], strict=False):
        if second_begin < first_end:
            raise TuneLedgerError(f"{path}: tensors {first!r} and {second!r} overlap")


def tensor_shapes(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name → (dtype, shape), read from the header alone."""
    header, _ = read_header(path)
    return {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}


def metadata(path: Path) -> dict[str, str]:
    return read_header(path)[0].get("__metadata__", {})


def tensor_digest(path: Path) -> str:
    """SHA-256 of the tensors alone (names, dtypes, shapes, bytes), ignoring `__metadata__`.

    The same weights give the same digest whatever commit or content id the header carries.
    """
    header, data_start = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for name in sorted(k for k in header if k != "__metadata__"):
            entry = header[name]
            begin, end = entry["data_offsets"]
            digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
            handle.seek(data_start + begin)
            remaining = end - begin
            while remaining:
                chunk = handle.read(min(remaining, 4 * 1024 * 1024))
                if not chunk:
                    raise TuneLedgerError(f"{path}: truncated inside tensor {name!r}")
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()


def load_tensors(path: Path, device: str = "cpu") -> dict:
    """Tensors of a checked file (no pickle involved)."""
    from safetensors.torch import load_file

    read_header(path)
    return load_file(str(path), device=device)


def rewrite_metadata(path: Path, extra: dict[str, str]) -> None:
    """Rewrite a (small) safetensors file with `extra` merged into its `__metadata__`."""
    from safetensors.torch import save_file

    merged = {**metadata(path), **extra}
    save_file(load_tensors(path), str(path), metadata=merged)
