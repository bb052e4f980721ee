"""Which CPU kernels compute the weights, and a fingerprint that tells whether two machines round alike.

Byte-identical rebuilds are promised between machines whose kernel fingerprints agree: the same op,
on the same inputs, gives the same bits. The fingerprint hashes the output of each float op a
GPT-2 training step goes through, one short hash per op, so that two machines that part can name
the first op where they do (`tuneledger reproduce`, `metadata.json`'s `environment.kernels`).
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

# CPU kernels that round alike across x86-64 machines with AVX2. Left to choose, MKL and ATen take
# vendor- and width-specific code paths (AVX-512 on one machine, AVX2 on the next), and a fresh
# clone elsewhere trains other weights. MKL's COMPATIBLE branch is the one it documents as the same
# across vendors. A value already set in the environment wins, and metadata records what was used.
PORTABLE_CPU_KERNELS = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

FINGERPRINT_VERSION = 1  # bump when the op set changes: fingerprints of two versions never compare


def use_portable_cpu_kernels() -> None:
    """Select PORTABLE_CPU_KERNELS; effective only before torch runs its first kernel."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        for name, value in PORTABLE_CPU_KERNELS.items():
            os.environ.setdefault(name, value)


def pin_cpu_threads(count: int) -> None:
    """Fix torch's intra-op thread count: CPU results are byte-identical only for the same count."""
    import torch

    torch.set_num_threads(count)


def cpu_kernels() -> dict:
    """The CPU kernel selection in effect."""
    import torch

    settings = {name: os.environ.get(name) for name in PORTABLE_CPU_KERNELS}
    return {**settings, "aten_capability": torch.backends.cpu.get_cpu_capability()}


def _cpuinfo(field: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    return _cpuinfo("vendor_id") or platform.machine()


def describe() -> dict:
    """CPU, kernel settings and fingerprint of this process, for metadata and the reference record."""
    import torch

    return {
        "cpu": cpu_name(),
        "vendor": cpu_vendor(),
        "threads": torch.get_num_threads(),
        "settings": cpu_kernels(),
        "fingerprint_version": FINGERPRINT_VERSION,
        # [op, hash] pairs: a list keeps the order ops meet a training step through JSON that sorts keys
        "fingerprint": [[op, digest] for op, digest in fingerprint().items()],
    }


def first_difference(ours: dict, theirs: dict) -> str | None:
    """The first op (in fingerprint order) whose hash differs, or None when the two agree.

    Fingerprints of different op sets or thread counts differ as a whole, under a name that says so."""
    if ours.get("fingerprint_version") != theirs.get("fingerprint_version"):
        return "the fingerprint's op set (another TuneLedger version)"
    if ours.get("threads") != theirs.get("threads"):
        return f"the thread count ({ours.get('threads')} against {theirs.get('threads')})"
    other = dict(theirs.get("fingerprint", []))
    return next((op for op, digest in ours.get("fingerprint", []) if other.get(op) != digest), None)


def _digest(tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def fingerprint() -> dict[str, str]:
    """Op name → short hash of its output on fixed inputs, in the order a training step meets them.

    Each op runs on the default CPU kernels of this process (run it after `use_portable_cpu_kernels`
    and `pin_cpu_threads`, as the stages do). About 0.2 s."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        return _ops(generator)


def _ops(generator) -> dict[str, str]:
    import torch

    def normal(*shape):
        return torch.randn(*shape, generator=generator)

    ops: dict[str, str] = {}
    ops |= _matmuls(normal)
    ops |= _elementwise(normal)
    ops |= _backward_and_optimizer(normal, generator)
    ops["gpt2 train step"] = _gpt2_steps()
    return ops


def _matmuls(normal) -> dict[str, str]:
    import torch
    from torch.nn import functional

    ops = {}
    # The shapes of a small GPT-2 step (width 128, vocab 2048), a LoRA
    # projection (rank 8) and an odd size that takes the kernels' remainder paths.
    for n, k, m in [(256, 128, 384), (256, 128, 8), (256, 8, 384), (256, 128, 2048), (129, 65, 191)]:
        a, b, c = normal(n, k), normal(k, m), normal(m)
        ops[f"mm {n}x{k}x{m}"] = _digest(a @ b)
        ops[f"addmm {n}x{k}x{m}"] = _digest(torch.addmm(c, a, b))
        ops[f"mm transposed {k}x{n}x{m}"] = _digest(a.t() @ normal(n, m))
    x = normal(16, 4, 64, 32)
    ops["bmm 64x64x32x64"] = _digest(torch.matmul(x, x.transpose(-1, -2)))
    ops["sdpa causal 16x4x64x32"] = _digest(functional.scaled_dot_product_attention(x, x, x, is_causal=True))
    return ops


def _elementwise(normal) -> dict[str, str]:
    import torch
    from torch.nn import functional

    h = normal(8, 64, 128)
    return {
        "softmax": _digest(torch.softmax(h, -1)),
        "layer_norm": _digest(functional.layer_norm(h, (128,), normal(128), normal(128))),
        "gelu tanh": _digest(functional.gelu(h, approximate="tanh")),
        "tanh": _digest(torch.tanh(h)),  # GPT-2's gelu_new calls torch.tanh: MKL's vector math
        "sum dim": _digest(h.sum(-1)),
        "sum all": _digest(h.sum()),
        "cross_entropy": _digest(functional.cross_entropy(normal(256, 2048), torch.arange(256) * 7 % 2048)),
    }


def _backward_and_optimizer(normal, generator) -> dict[str, str]:
    import torch
    from torch.nn import functional

    ops = {}
    emb = normal(2048, 128).requires_grad_()
    w = normal(128, 384).requires_grad_()
    bias = normal(384).requires_grad_()
    ids = torch.randint(0, 2048, (8, 64), generator=generator)
    (functional.linear(functional.embedding(ids, emb), w.t(), bias).tanh() ** 2).mean().backward()
    ops["embedding backward"] = _digest(emb.grad)
    ops["linear backward weight"] = _digest(w.grad)
    ops["linear backward bias"] = _digest(bias.grad)
    # Fused AdamW (the default `train.optim`, and the base's pre-training) computes in ATen's own
    # vector code, whose IEEE operations round alike everywhere. The unfused one takes its square
    # root from MKL's vector math, which parts between Intel and AMD: it is left out of the promise.
    params = [torch.nn.Parameter(w.detach().clone()), torch.nn.Parameter(bias.detach().clone())]
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
    for _ in range(3):
        optimizer.zero_grad()
        (functional.linear(normal(32, 128), params[0].t(), params[1]) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    ops["adamw fused + clip"] = _digest(params[0])
    return ops


def _gpt2_steps() -> str:
    """Two training steps of a small GPT-2 as the pipeline trains one (fused AdamW, clipping):
    what the ops above miss, the composition catches."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1, n_head=4, n_embd=64, n_positions=64, vocab_size=512, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ids = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return _digest(torch.cat([p.detach().flatten() for p in model.parameters()]))
