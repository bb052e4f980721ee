"""Hostile and malformed input: each is refused with one clear line, never a crash or a traceback."""

from __future__ import annotations

import json
import struct
import sys

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies

from conftest import PROJECT, run
from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.params import validate_params
from tuneledger.package import manifest
from tuneledger.package.safetensors_io import open_checked, tensor_digest

pytestmark = pytest.mark.faults
DEFAULTS = yaml.safe_load((PROJECT / "params.yaml").read_text())
KEYS = [f"{group}.{key}" for group, values in DEFAULTS.items() if isinstance(values, dict) for key in values]
KEYS += [key for key, value in DEFAULTS.items() if not isinstance(value, dict)]

# Anything YAML can express: scalars of every type, lists and mappings of them.
yaml_values = strategies.recursive(
    strategies.none()
    | strategies.booleans()
    | strategies.integers()
    | strategies.floats(allow_nan=True)
    | strategies.text(max_size=20),
    lambda inner: (
        strategies.lists(inner, max_size=3)
        | strategies.dictionaries(strategies.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=strategies.dictionaries(strategies.sampled_from(KEYS), yaml_values, min_size=1, max_size=3))
def test_random_values_at_any_key_are_accepted_or_refused_by_name(changes):
    params = json.loads(json.dumps(DEFAULTS))
    for dotted, value in changes.items():
        node, *rest = dotted.split(".")
        if rest:
            params[node][rest[0]] = value
        else:
            params[node] = value
    try:
        validate_params(params)
    except TuneLedgerError as refused:
        lines = str(refused).splitlines()
        assert lines and all(line.startswith("params.yaml: ") for line in lines)
        assert any(key in str(refused) for key in changes), (changes, str(refused))


@settings(max_examples=100, deadline=None)
@given(document=yaml_values)
def test_any_document_shape_is_refused_cleanly(document):
    try:
        validate_params(document)
    except TuneLedgerError as refused:
        assert str(refused).startswith("params.yaml: ")


def rss_after(code: str) -> tuple[int, str]:
    """Peak RSS (MiB) of a fresh interpreter that runs `code`, and what it printed."""
    # VmHWM is this process's own peak; ru_maxrss would include the forking test runner's.
    peak = "print(next(int(l.split()[1]) for l in open('/proc/self/status') if 'VmHWM' in l) // 1024)"
    probe = f"{code}\n{peak}"
    done = run(sys.executable, "-c", probe, cwd=PROJECT, check=False)
    lines = done.stdout.strip().splitlines()
    return int(lines[-1]), "\n".join(lines[:-1]) + done.stderr


def test_a_single_50_mb_line_is_read_within_bounds(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "x" * 50_000_000}) + "\n")
    peak, printed = rss_after(
        f"from pathlib import Path\nfrom tuneledger.models.data import read_jsonl\n"
        f"print(len(read_jsonl(Path({str(path)!r}))[0]['text']))"
    )
    assert "50000000" in printed and peak < 600, peak
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "' + "x" * 50_000_000 + "\n")
    from tuneledger.models.data import read_jsonl

    with pytest.raises(TuneLedgerError, match=r"broken.jsonl:1: not valid JSON"):
        read_jsonl(broken)


def test_a_million_tiny_rows_are_read_within_bounds(tmp_path):
    path = tmp_path / "many.jsonl"
    with open(path, "w") as handle:
        for i in range(1_000_000):
            handle.write(f'{{"prompt": "q{i}", "completion": "a"}}\n')
    peak, printed = rss_after(
        f"from pathlib import Path\nfrom tuneledger.models.data import read_jsonl\n"
        f"print(len(read_jsonl(Path({str(path)!r}))))"
    )
    assert "1000000" in printed and peak < 1500, peak


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (
            {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 4,
            "file not fully covered",
        ),
        (
            {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "invalid shape, data type, or offset",
        ),
        ({"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown variant `Q9`"),
        (
            {"w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]}},
            b"\0" * 8,
            "file not fully covered",
        ),
        (
            {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}},
            b"",
            "invalid value: integer `-1`, expected usize",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "invalid offset for tensor `b`",
        ),
        ({"__metadata__": {"x": 1}}, b"", "invalid type: integer `1`, expected a string"),
    ],
)
def test_malformed_safetensors_are_refused_before_allocation(tmp_path, header, data, message):
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    with pytest.raises(TuneLedgerError, match=message) as refused, open_checked(path):
        pass
    assert str(refused.value).startswith(f"{path}: refused safetensors file: ")
    assert "\n" not in str(refused.value)
    with pytest.raises(TuneLedgerError, match=message):
        tensor_digest(path)


def test_header_length_beyond_the_file_and_truncated_files(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(TuneLedgerError, match="header too large"), open_checked(path):
        pass
    path.write_bytes(b"\x01\x02")
    with pytest.raises(TuneLedgerError, match="header too small"), open_checked(path):
        pass


@pytest.mark.parametrize("name", ["model.bin", "optimizer.pt", "state.pkl", "weights.pth", "sub/extra.ckpt"])
def test_pickle_files_in_a_package_are_refused(tmp_path, name):
    (tmp_path / "pkg" / name).parent.mkdir(parents=True)
    torch.save({"x": 1}, tmp_path / "pkg" / name)
    with pytest.raises(TuneLedgerError, match="pickle file in a package is refused"):
        manifest.package_files(tmp_path / "pkg")


@pytest.mark.parametrize("path", ["../escape.json", "/etc/passwd", "a/../../b", "", "sub\\..\\x"])
def test_manifest_paths_must_stay_inside_the_package(tmp_path, path):
    text = json.dumps({"content_id": "x", "files": {path: {"sha256": "0" * 64, "size": 1}}})
    with pytest.raises(TuneLedgerError, match="manifest paths must stay inside the package"):
        manifest.parse(text, tmp_path / "m.json")


def test_a_symlinked_package_file_is_refused(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "secret").write_text("x")
    (tmp_path / "pkg" / "tokenizer.json").symlink_to(tmp_path / "secret")
    with pytest.raises(TuneLedgerError, match="symlink inside a package is refused"):
        manifest.package_files(tmp_path / "pkg")


@pytest.mark.parametrize(
    ("dtype", "shape", "size"),
    [("F8_E4M3", [4], 4), ("F8_E8M0", [4], 4), ("F4", [4], 2), ("F6_E2M3", [4], 3)],
)
def test_valid_small_float_safetensors_are_read(tmp_path, dtype, shape, size):
    from tuneledger.package.weights import tensor_shapes

    path = tmp_path / "w.safetensors"
    path.write_bytes(
        safetensors_bytes({"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, size]}}, b"\1" * size)
    )
    assert tensor_shapes(path) == {"w": (dtype, shape)}
    assert len(tensor_digest(path)) == 64
