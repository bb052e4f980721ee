"""What an adapter is, read from its weights rather than trusted from names or configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tuneledger.errors import TuneLedgerError
from tuneledger.package.safetensors_io import tensor_shapes

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


def read_config(package: Path) -> dict:
    path = Path(package) / CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneLedgerError(f"{path}: not found; is this a LoRA adapter package?") from None
    except json.JSONDecodeError as exc:
        raise TuneLedgerError(f"{path}:{exc.lineno}:{exc.colno}: corrupt adapter config: {exc.msg}") from None


def lora_modules(shapes: dict[str, tuple[str, list[int]]]) -> dict[str, dict[str, list[int]]]:
    """module path → {"A": shape, "B": shape} for every LoRA pair in a weights file."""
    modules: dict[str, dict[str, list[int]]] = {}
    for name, (_, shape) in shapes.items():
        match = _LORA.match(name)
        if match:
            modules.setdefault(match["module"], {})[match["part"]] = shape
    return modules


def describe_adapter(package: Path) -> dict:
    """Rank, targets and parameter count from the tensor shapes, next to what the config claims."""
    package = Path(package)
    shapes = tensor_shapes(package / WEIGHTS)
    modules = lora_modules(shapes)
    ranks = sorted({pair["A"][0] for pair in modules.values() if "A" in pair})
    config = read_config(package)
    targets = config.get("target_modules") or []
    return {
        "rank_from_weights": ranks[0] if len(ranks) == 1 else ranks,
        "rank_from_config": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "target_modules_from_weights": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "target_modules_from_config": sorted(targets) if isinstance(targets, list) else targets,
        "adapted_layers": len(modules),
        "trainable_parameters": sum(_numel(shape) for _, shape in shapes.values()),
        "tensors": len(shapes),
    }


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def effective_update_norms(package: Path) -> dict[str, float]:
    """Frobenius norm of each adapted layer's weight update (alpha/r · B·A): comparable across ranks."""
    import torch

    from tuneledger.package.safetensors_io import load_tensors

    package = Path(package)
    config = read_config(package)
    tensors = load_tensors(package / WEIGHTS)
    pairs: dict[str, dict[str, object]] = {}
    for name, tensor in tensors.items():
        match = _LORA.match(name)
        if match:
            pairs.setdefault(match["module"], {})[match["part"]] = tensor
    norms = {}
    for module, pair in pairs.items():
        if "A" in pair and "B" in pair:
            a, b = pair["A"].double(), pair["B"].double()
            scale = float(config.get("lora_alpha", 1)) / a.shape[0]
            norms[module] = float(torch.linalg.matrix_norm(b @ a) * scale)
    return norms


def health_problems(package: Path) -> list[str]:
    """Why these weights should not be served: non-finite values, or LoRA B never trained."""
    import torch

    from tuneledger.package.safetensors_io import load_tensors

    problems = []
    for name, tensor in sorted(load_tensors(Path(package) / WEIGHTS).items()):
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            problems.append(f"{name}: {bad} NaN/Inf values")
        elif ".lora_B." in name and not tensor.any():
            problems.append(f"{name}: all zero (the adapter was never trained)")
    return problems


def norm_drift(candidate: Path, reference: Path) -> tuple[float | None, str | None]:
    """Largest relative change of a layer's update norm, and which layer; None if nothing to compare."""
    new, old = effective_update_norms(candidate), effective_update_norms(reference)
    shared = sorted(new.keys() & old.keys())
    if not shared:
        return None, None
    worst = max(shared, key=lambda m: abs(new[m] - old[m]) / max(old[m], 1e-12))
    return abs(new[worst] - old[worst]) / max(old[worst], 1e-12), worst
