"""A real base at its real size: SmolLM2-135M-Instruct (538 MB of float32 safetensors).

Side by side in one run: `dvc repro --force` against a plain trl script doing the same training and
evaluation; peak RSS of training in nf4 against float32; the local bytes a base costs (a local
directory, and a hub id through the Hugging Face cache); the `base` stage, no-op `dvc repro` and `dvc push`
with the large base.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import sys

from common import (
    HERE_BENCH,
    PROJECT,
    clone_template,
    interleaved,
    ratio,
    set_param,
    sh,
    summary,
    timed,
)

from tuneledger.core.kernels import PORTABLE_CPU_KERNELS
from tuneledger.core.s3local import LocalS3, configure_remote

# 48 steps of batch 8 take 2.5 to 3 minutes on 2 cores: at least 2 minutes of training, a real workload.
TRAIN = {"max_steps": 48, "batch_size": 8, "max_length": 64, "lr": 0.005, "logging_steps": 8}
EVAL = {"max_examples": 48, "batch_size": 16}
RSS_STEPS = 8  # peak memory is reached in the first steps
HUB_ID = "bench/smollm2-135m-instruct"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
PEAK_RSS = (  # the child's peak resident set, from the kernel's own accounting (KiB on Linux)
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def smollm2_dir():
    """The tests' offline conversion of SmolLM2 (tests/real_model.py, which this module's name shadows)."""
    spec = importlib.util.spec_from_file_location("tests_real_model", PROJECT / "tests" / "real_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.smollm2_dir()


def footprint_mib(base, quantization: str) -> float:
    """The loaded model's own bytes (transformers' get_memory_footprint), in a fresh process."""
    code = (
        "import sys; from tuneledger import modeling; "
        "print(modeling.load_base(sys.argv[1], 'cpu', 'auto', sys.argv[2]).get_memory_footprint())"
    )
    return int(sh(sys.executable, "-c", code, str(base), quantization).split()[-1]) / 2**20


def disk_bytes(*roots) -> int:
    """Allocated bytes under the roots, each inode counted once (as `du` counts hardlinks)."""
    seen, total = set(), 0
    for folder, _, files in (entry for root in roots for entry in os.walk(root)):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def configure(repo, base: str, **extra) -> None:
    set_param(repo, "model.base", base)
    set_param(repo, "lora.target_modules", "auto")  # q_proj, v_proj on LLaMA
    for key, value in {**{f"train.{k}": v for k, v in TRAIN.items()}, **extra}.items():
        set_param(repo, key, value)
    for key, value in EVAL.items():
        set_param(repo, f"eval.{key}", value)


def fake_hub_cache(root, base) -> dict:
    """The layout huggingface_hub keeps for a downloaded repo (blobs, snapshot links, refs/main)."""
    entry = root / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = entry / "snapshots" / HUB_COMMIT
    (entry / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(p for p in base.iterdir() if p.is_file())):
        blob = entry / "blobs" / f"blob{index}"
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(HUB_COMMIT)
    return {"HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}


def bytes_of_base(repo, source, env=None) -> tuple[int, float]:
    """Bytes `dvc repro base` adds to local disk (repository, cache and the base's source together,
    so a link to the source counts nothing), and its time."""
    before = disk_bytes(repo, source)
    seconds = timed(lambda: sh("dvc", "repro", "base", cwd=repo, env=env))
    return disk_bytes(repo, source) - before, seconds


def bucket_objects(s3, bucket: str) -> dict[str, int]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def base_object_md5s(repo) -> set[str]:
    """The MD5 names of models/base's files and of its directory listing."""
    import yaml

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = next(o for o in lock["stages"]["base"]["outs"] if o["path"] == "models/base")
    listing_md5 = out["md5"]
    listing = json.loads((repo / ".dvc/cache/files/md5" / listing_md5[:2] / listing_md5[2:]).read_text())
    return {listing_md5} | {entry["md5"] for entry in listing}


def peak_rss_mib(repo, cmd: list[str]) -> float:
    env = {**os.environ, **PORTABLE_CPU_KERNELS}
    return int(sh(sys.executable, "-c", PEAK_RSS, *cmd, cwd=repo, env=env).split()[-1]) / 1024


def local_bytes(work, base) -> dict:
    """`dvc repro base` of a local directory and of a hub id (from an offline HF cache)."""
    repo = clone_template(work / "real-model")
    configure(repo, str(base))
    local_added, local_seconds = bytes_of_base(repo, base)
    hub_repo = clone_template(work / "real-model-hub")
    configure(hub_repo, HUB_ID, **{"model.revision": "main"})
    hub_env = {**os.environ, **fake_hub_cache(work / "hf-cache", base)}
    cache_bytes = disk_bytes(work / "hf-cache")  # what the download itself took
    hub_added, hub_seconds = bytes_of_base(hub_repo, work / "hf-cache", env=hub_env)
    shutil.rmtree(hub_repo)
    shutil.rmtree(work / "hf-cache")
    return {
        "repo": repo,
        "local_added": local_added,
        "local_seconds": local_seconds,
        "hub_added": hub_added,
        "hub_seconds": hub_seconds,
        "hub_cache": cache_bytes,
    }


def side_by_side(repo, rounds: int) -> dict:
    """`dvc repro --force` against the plain trl script, alternating, each training from scratch."""
    train_seconds: dict[str, list[float]] = {"dvc repro": [], "plain": []}

    def pipeline() -> None:
        sh("dvc", "repro", "--force", cwd=repo)
        summary_file = repo / "results/train/summary.json"
        train_seconds["dvc repro"].append(json.loads(summary_file.read_text())["runtime_s"])

    def plain() -> None:
        env = {**os.environ, **PORTABLE_CPU_KERNELS}  # the same arithmetic as the stages
        out = sh(sys.executable, str(HERE_BENCH / "plain_real_model.py"), "params.yaml", cwd=repo, env=env)
        train_seconds["plain"].append(json.loads(out.strip().splitlines()[-1])["train_seconds"])

    def forget_checkpoints() -> None:  # otherwise `--force` resumes the finished run and skips training
        shutil.rmtree(repo / "models" / "checkpoints", ignore_errors=True)

    times = interleaved({"dvc repro": pipeline, "plain": plain}, rounds, between=forget_checkpoints)
    sh("dvc", "checkout", cwd=repo)  # the completed run's checkpoints back
    return {"times": times, "train_seconds": train_seconds}


def pushes(ctx: dict, repo) -> dict:
    """The first `dvc push` (base included), then a new version's (its own objects only)."""
    s3 = ctx.get("s3") or LocalS3().start()
    ctx["s3"] = s3  # stopped by run.py
    s3.client().create_bucket(Bucket="real-model")
    configure_remote(s3.endpoint, bucket="real-model", cwd=str(repo))
    first = timed(lambda: sh("dvc", "push", cwd=repo))
    after_first = bucket_objects(s3, "real-model")
    set_param(repo, "lora.r", 4)
    set_param(repo, "train.max_steps", RSS_STEPS)
    sh("dvc", "repro", cwd=repo)
    second = timed(lambda: sh("dvc", "push", cwd=repo))
    added = {k: v for k, v in bucket_objects(s3, "real-model").items() if k not in after_first}
    base_md5s = base_object_md5s(repo)
    again = [k for k in added if k.split("/")[-2] + k.split("/")[-1].removesuffix(".dir") in base_md5s]
    if again:
        raise RuntimeError(f"the second push uploaded base objects again: {again[:3]}")
    return {"first": first, "first_objects": after_first, "second": second, "added": added}


def training_rss(repo, rounds: int) -> dict[str, list[float]]:
    """Peak RSS (MiB) of the train stage in float32 and in nf4, alternating."""
    train_stage = [sys.executable, "-m", "tuneledger.stages.train"]
    rss: dict[str, list[float]] = {"none": [], "nf4": []}
    for round_ in range(rounds):
        for quantization in ("none", "nf4") if round_ % 2 == 0 else ("nf4", "none"):
            set_param(repo, "model.quantization", quantization)
            shutil.rmtree(repo / "models" / "checkpoints", ignore_errors=True)
            rss[quantization].append(peak_rss_mib(repo, train_stage))
    return rss


def single(name: str, value: float, target: str) -> tuple:
    return (name, value, value, value, target)


def run(ctx: dict, rounds: int = 2) -> dict:
    base = smollm2_dir()
    base_bytes = disk_bytes(base)
    disk = local_bytes(ctx["work"], base)
    repo = disk["repo"]
    compared = side_by_side(repo, rounds)
    after_reruns = disk_bytes(repo)  # every stage rebuilt its outputs `rounds` times, the base byte for byte
    times, train_seconds = compared["times"], compared["train_seconds"]
    metrics = json.loads((repo / "results/evaluate/metrics.json").read_text())
    noop = interleaved(
        {"repro": lambda: sh("dvc", "repro", cwd=repo), "status": lambda: sh("dvc", "status", cwd=repo)}, 3
    )
    pushed = pushes(ctx, repo)
    rss = training_rss(repo, rounds)
    footprint = {quantization: footprint_mib(base, quantization) for quantization in ("none", "nf4")}
    hub_total = disk["hub_cache"] + disk["hub_added"]
    steps = f"{TRAIN['max_steps']} steps of batch {TRAIN['batch_size']}"
    return {
        "title": "A real base: SmolLM2-135M-Instruct",
        "ratios": [
            ("real model: pipeline / plain trl script", *ratio(times["dvc repro"], times["plain"]), "≤ 1.05"),
            ("real model: peak RSS of training, nf4 / float32", *ratio(rss["nf4"], rss["none"]), "≤ 0.6"),
            single(
                "real model: loaded model footprint, nf4 / float32", footprint["nf4"] / footprint["none"], "—"
            ),
            single(
                "real model: local bytes per base (local directory)",
                disk["local_added"] / base_bytes,
                "≤ 1.05",
            ),
            single(
                "real model: local bytes per base (hub id, HF cache included)",
                hub_total / base_bytes,
                "≤ 1.05",
            ),
        ],
        "rows": [
            (
                "base model",
                f"{base_bytes:,} B",
                "SmolLM2-135M-Instruct, float32 safetensors, converted offline",
            ),
            (
                "`dvc repro --force` (4 stages)",
                summary(times["dvc repro"]),
                f"training {summary(train_seconds['dvc repro'])} of it, {steps}",
            ),
            (
                "plain trl script (1 process)",
                summary(times["plain"]),
                f"training {summary(train_seconds['plain'])} of it; same data, LoRA, steps and evaluation",
            ),
            (
                "exact match, base → tuned",
                f"{metrics['base']['exact_match']:.3f} → {metrics['tuned']['exact_match']:.3f}",
                f"{EVAL['max_examples']} test rows of reverse-words",
            ),
            (
                "`dvc repro base`, local directory",
                f"{disk['local_seconds']:.3f} s",
                f"adds {disk['local_added']:,} B (repository and cache)",
            ),
            (
                "`dvc repro base`, hub id (offline HF cache)",
                f"{disk['hub_seconds']:.3f} s",
                f"adds {disk['hub_added']:,} B beside the HF cache's {disk['hub_cache']:,} B",
            ),
            (
                f"repository and cache after {rounds} forced runs",
                f"{after_reruns:,} B",
                "base, data, checkpoints, adapter, package: one copy each (the runs repeat byte for byte)",
            ),
            ("no-op `dvc repro`", summary(noop["repro"]), "the 538 MB base in the workspace"),
            ("`dvc status`", summary(noop["status"]), ""),
            (
                "first `dvc push`",
                f"{pushed['first']:.3f} s",
                f"{sum(pushed['first_objects'].values()):,} B in {len(pushed['first_objects'])} objects, "
                "the base among them",
            ),
            (
                f"a new version (r=4, {RSS_STEPS} steps), `dvc push`",
                f"{pushed['second']:.3f} s",
                f"{sum(pushed['added'].values()):,} B in {len(pushed['added'])} new objects, "
                "none of them the base's",
            ),
            (
                "peak RSS, training in float32",
                f"{statistics.median(rss['none']):.0f} MiB",
                f"train stage, {RSS_STEPS} steps",
            ),
            (
                "peak RSS, training in nf4",
                f"{statistics.median(rss['nf4']):.0f} MiB",
                "bitsandbytes nf4 (QLoRA)",
            ),
        ],
        "notes": "Local bytes count each inode once: the workspace, the DVC cache and the HF cache share one "
        "copy through hardlinks. Peak RSS is the kernel's figure (ru_maxrss) for the train stage process. "
        "On this CPU nf4 shrinks the weights but not the peak: float32 weights stay a read-only memory map "
        "of the safetensors file, while bitsandbytes dequantizes each layer for every matmul, and at this "
        "size activations and logits (batch 8 × 64 tokens × a 49,152-token vocabulary) outweigh the weights.",
    }
