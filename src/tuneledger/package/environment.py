"""The software and hardware a version was built with: enough to rebuild its environment.

Only names and versions are recorded, and of environment variables only the three that select CPU
kernels (kernels.PORTABLE_CPU_KERNELS): any other can hold credentials.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys


def installed_packages() -> dict[str, str]:
    """Every installed distribution → its exact version (this package itself excluded)."""
    found = {}
    for dist in importlib.metadata.distributions():
        metadata = dist.metadata  # parses METADATA on each access, as `dist.version` would again
        name = metadata["Name"]
        if name and name.lower() != "tuneledger":
            found[name] = metadata["Version"]
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def describe() -> dict:
    import os

    import torch

    from tuneledger.core import kernels

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": kernels.cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpus or None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "kernels": kernels.describe(),  # settings and fingerprint: whether another CPU rounds alike
        "packages": installed_packages(),
    }


def requirements_txt(packages: dict[str, str]) -> str:
    """Exact pins of the producing environment, for rebuilding a serving image."""
    lines = [
        "# Exact versions of the environment that produced this version (pip install -r requirements.txt)."
    ]
    lines += [f"{name}=={version}" for name, version in packages.items()]
    return "\n".join(lines) + "\n"
