"""What an adapter is, read from its weights rather than trusted from names or configs."""

from __future__ import annotations

import math
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuneledger.core.errors import TuneLedgerError
from tuneledger.package.adapter_config import read_adapter_config
from tuneledger.package.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tuneledger.package.safetensors_io import open_checked

if TYPE_CHECKING:  # torch is imported where tensors are read: listing and verifying need no torch
    import torch

_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


def read_config(package: Path) -> dict:
    return read_adapter_config(Path(package) / ADAPTER_CONFIG)


def tensor_shapes(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name → (dtype, shape) of every tensor, read from the header alone."""
    with open_checked(path) as handle:
        slices = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118 (not a mapping)
        return {name: (piece.get_dtype(), piece.get_shape()) for name, piece in slices.items()}


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
    shapes = tensor_shapes(package / ADAPTER_WEIGHTS)
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


# --- each layer's weight update, as peft applies it -----------------------------------------
# The drift check compares two versions of an adapter layer by layer. A layer's update is what the
# adapter adds to the base weight W at inference:
#   LoRA:  ΔW = s·B·A, with peft's scaling s = alpha/r, or alpha/√r under rsLoRA (`use_rslora`);
#   DoRA:  ΔW = m ⊙ (W + s·B·A) / ‖W + s·B·A‖ − W (row-wise norm; m is `lora_magnitude_vector`).
# DoRA's update needs W. The gate compares two registered packages and does not download the base
# (gigabytes, and not needed for anything else), so without a base a DoRA layer is compared by
# its directional part s·B·A and, separately, by the change of its magnitude vector. Given the
# base directory, the exact DoRA update is compared instead.

PEFT_PREFIX = "base_model.model."  # what peft puts before the base model's own module names
_MAGNITUDE = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")


@dataclass(frozen=True)
class AdaptedLayer:
    """One adapted layer of a package: LoRA factors (float64), peft's scaling, DoRA's magnitude."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scaling: float
    magnitude: torch.Tensor | None = None

    def low_rank_update(self) -> torch.Tensor:
        """s·B·A (convolution factors flattened to matrices: out × everything else)."""
        return self.scaling * (self.lora_b.flatten(1) @ self.lora_a.flatten(1))

    def low_rank_norm(self) -> float:
        """‖s·B·A‖ without forming the out × in product: ‖BA‖² = Σ (BᵀB ⊙ AAᵀ), two r × r matrices.

        For a 70B base's MLP layer the product alone would take about 2 GB of float64.
        """
        a, b = self.lora_a.flatten(1), self.lora_b.flatten(1)
        squared = float(((b.T @ b) * (a @ a.T)).sum())
        return abs(self.scaling) * math.sqrt(max(squared, 0.0))


def lora_scaling(config: dict, module: str, rank: int) -> float:
    """peft's scaling for one layer: alpha/√r under rsLoRA, alpha/r otherwise.

    `rank` comes from the weights themselves (they are what is applied); alpha from the config,
    per layer when `alpha_pattern` names the layer.
    """
    alpha = config.get("lora_alpha", 8)  # peft's LoraConfig default
    pattern = config.get("alpha_pattern") or {}
    if pattern:
        from peft.utils.other import get_pattern_key  # peft's own matching; imported only when needed

        alpha = pattern.get(get_pattern_key(pattern.keys(), module.removeprefix(PEFT_PREFIX)), alpha)
    alpha = float(alpha)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


class AdapterWeights:
    """An adapter package's layers, read with safetensors one layer at a time (an adapter for a 70B
    base can hold gigabytes of factors)."""

    def __init__(self, package: Path):
        package = Path(package)
        self.config = read_config(package)
        self._stack = ExitStack()
        self._stored = self._stack.enter_context(open_checked(package / ADAPTER_WEIGHTS, framework="pt"))
        self._names: dict[str, dict[str, str]] = {}
        for name in self._stored.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
            lora, magnitude = _LORA.match(name), _MAGNITUDE.match(name)
            if lora:
                self._names.setdefault(lora["module"], {})[lora["part"]] = name
            elif magnitude:
                self._names.setdefault(magnitude["module"], {})["m"] = name

    def __enter__(self) -> AdapterWeights:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def modules(self) -> list[str]:
        """Adapted layers (those with both LoRA factors), sorted."""
        return sorted(m for m, names in self._names.items() if "A" in names and "B" in names)

    def layer(self, module: str) -> AdaptedLayer:
        names = self._names[module]
        lora_a = self._stored.get_tensor(names["A"]).double()
        return AdaptedLayer(
            lora_a=lora_a,
            lora_b=self._stored.get_tensor(names["B"]).double(),
            scaling=lora_scaling(self.config, module, rank=lora_a.shape[0]),
            magnitude=self.magnitude(module),
        )

    def magnitude(self, module: str) -> torch.Tensor | None:
        name = self._names[module].get("m")
        return self._stored.get_tensor(name).double() if name else None


def dora_update(layer: AdaptedLayer, base_weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """DoRA's exact ΔW = m ⊙ V/‖V‖ − W, V = W + s·B·A, norms per output row (as peft computes them)."""
    import torch

    weight = base_weight.double()
    weight = (weight.T if fan_in_fan_out else weight).flatten(1)  # Conv1D stores W as in × out
    directed = weight + layer.low_rank_update()
    row_norms = torch.linalg.vector_norm(directed, dim=1, keepdim=True)
    return layer.magnitude.reshape(-1, 1) / row_norms * directed - weight


class BaseWeights:
    """Tensors of a base model directory (one or several safetensors files), read one at a time."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self._stack = ExitStack()
        self._files: dict[str, object] = {}
        paths = sorted(self.base.glob("*.safetensors"))
        if not paths:
            raise TuneLedgerError(f"{self.base}: no *.safetensors weights; is this the base model directory?")
        for path in paths:
            handle = self._stack.enter_context(open_checked(path, framework="pt"))
            self._files.update(dict.fromkeys(handle.keys(), handle))

    def __enter__(self) -> BaseWeights:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def weight_of(self, module: str) -> torch.Tensor:
        name = module.removeprefix(PEFT_PREFIX) + ".weight"
        handle = self._files.get(name)
        if handle is None:
            raise TuneLedgerError(
                f"{self.base}: no tensor {name!r} for the DoRA layer {module}; "
                "is this the base the adapter was trained on?"
            )
        return handle.get_tensor(name)


def effective_update_norms(package: Path, base: Path | None = None) -> dict[str, float]:
    """Frobenius norm of each adapted layer's weight update, with peft's real scaling.

    Comparable across ranks and scalings. A DoRA layer's norm is its exact update when `base` is
    given, and its directional part s·B·A otherwise (see `norm_drift`).
    """
    import torch

    norms = {}
    with ExitStack() as stack:
        adapter = stack.enter_context(AdapterWeights(package))
        fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out"))
        base_weights = None
        for module in adapter.modules():
            layer = adapter.layer(module)
            if layer.magnitude is None or base is None:
                norms[module] = layer.low_rank_norm()
                continue
            base_weights = base_weights or stack.enter_context(BaseWeights(base))
            update = dora_update(layer, base_weights.weight_of(module), fan_in_fan_out)
            norms[module] = float(torch.linalg.matrix_norm(update))
    return norms


def magnitude_changes(candidate: Path, reference: Path) -> dict[str, float]:
    """‖m_new − m_old‖ / ‖m_old‖ of each DoRA magnitude vector both packages have.

    Both magnitudes start from the base's row norms, so their difference is the difference of what
    each run learnt; relative to the base's norms it is small unless a magnitude collapsed, blew up
    or belongs to another base.
    """
    import torch

    changes = {}
    with AdapterWeights(candidate) as new, AdapterWeights(reference) as old:
        for module in sorted(set(new.modules()) & set(old.modules())):
            m_new, m_old = new.magnitude(module), old.magnitude(module)
            if m_new is not None and m_old is not None and m_new.shape == m_old.shape:
                change = torch.linalg.vector_norm(m_new - m_old) / torch.linalg.vector_norm(m_old).clamp_min(
                    1e-12
                )
                changes[f"{module}.lora_magnitude_vector"] = float(change)
    return changes


def health_problems(package: Path) -> list[str]:
    """Why these weights should not be served: non-finite values, or LoRA B never trained."""
    import torch

    problems = []
    with open_checked(Path(package) / ADAPTER_WEIGHTS, framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    for name, tensor in sorted(tensors.items()):
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            problems.append(f"{name}: {bad} NaN/Inf values")
        elif ".lora_B." in name and not tensor.any():
            problems.append(f"{name}: all zero (the adapter was never trained)")
    return problems


def norm_drift(candidate: Path, reference: Path, base: Path | None = None) -> tuple[float | None, str | None]:
    """Largest relative change of a layer's update norm, and which layer; None if nothing to compare.

    With `base`, DoRA layers are compared by their exact update. Without it, their magnitude
    vectors are compared too (relative change of the vector), beside their directional part.
    """
    new, old = effective_update_norms(candidate, base), effective_update_norms(reference, base)
    changes = {m: abs(new[m] - old[m]) / max(old[m], 1e-12) for m in new.keys() & old.keys()}
    if base is None:
        changes.update(magnitude_changes(candidate, reference))
    if not changes:
        return None, None
    worst = max(sorted(changes), key=changes.__getitem__)
    return changes[worst], worst
