"""The software and hardware a version was built with: enough to rebuild its environment.

Only names and versions are recorded, and of environment variables only the three that select CPU
kernels (modeling.PORTABLE_CPU_KERNELS): any other can hold credentials.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path


def installed_packages() -> dict[str, str]:
    """Every installed distribution → its exact version (this package itself excluded)."""
    found = {}
    for dist in importlib.metadata.distributions():
        metadata = dist.metadata  # parses METADATA on each access, as `dist.version` would again
        name = metadata["Name"]
        if name and name.lower() != "tuneledger":
            found[name] = metadata["Version"]
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    import os

    import torch

    from tuneledger.modeling import cpu_kernels

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpus or None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_kernels": cpu_kernels(),
        "packages": installed_packages(),
    }


def requirements_txt(packages: dict[str, str]) -> str:
    """Exact pins of the producing environment, for rebuilding a serving image."""
    lines = [
        "# Exact versions of the environment that produced this version (pip install -r requirements.txt)."
    ]
    lines += [f"{name}=={version}" for name, version in packages.items()]
    return "\n".join(lines) + "\n"
