"""Serving many versions on SmolLM2-135M: throughput and time to first token of the batched server
against the one-at-a-time path (the same server with --max-batch 1), transformers' continuous
batching (`generate_batch`) and one padded `model.generate`; mixed versions in one batch; /health
while it runs; a rollback to a resident version.

Each of 1, 4 and 16 clients asks for 64 greedy tokens (chat, streamed), back to back.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from common import sh, smollm2_chat_run, start_server

from tuneledger.core.s3local import LocalS3, configure_remote

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from forged_versions import register_forged_version  # noqa: E402
from real_model import smollm2_dir  # noqa: E402

CLIENTS = (1, 4, 16)
TOKENS = 64
SUBJECTS = "cat dog owl fox bee eel elk yak ant bat cow emu gnu hen jay kit".split()
PROMPTS = [
    [{"role": "user", "content": f"Tell me a long story about a {s} in a big city."}] for s in SUBJECTS
]


def build(work: Path) -> tuple[Path, LocalS3, list[str]]:
    """A SmolLM2 repository with v1.0.0 (a short real training) in prod, and v1.1.0 and v1.2.0
    (its LoRA B scaled) registered beside it."""
    repo = smollm2_chat_run(work / "serve-many", **{"export.max_new_tokens": TOKENS})
    s3 = LocalS3()
    s3.start()
    s3.client().create_bucket(Bucket="serve-many")
    configure_remote(s3.endpoint, bucket="serve-many", cwd=str(repo))
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "SmolLM2, a short fine-tune", cwd=repo)
    sh("tuneledger", "register", "--push", cwd=repo)
    sh("tuneledger", "promote", "v1.0.0", "--stage", "prod", cwd=repo)
    others = [register_forged_version(repo, scale) for scale in (0.5, -1.0)]
    return repo, s3, ["v1.0.0", *others]


def ask(url: str, messages, model: str) -> tuple[float | None, int]:
    """(seconds to the first text, output tokens) of one streamed chat completion; (None, 0) if
    it failed."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started, first, tokens = time.perf_counter(), None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=900) as reply:
        if reply.status_code != 200:
            return None, 0
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first, tokens


def load(url: str, clients: int, models: list[str]) -> dict:
    """`clients` closed-loop clients, max(1, 16 // clients) requests each; tokens/s and TTFT."""
    each, firsts, tokens, failed = max(1, 16 // clients), [], [], []

    def client(index: int) -> None:
        for round_ in range(each):
            first, count = ask(url, PROMPTS[(index + round_) % len(PROMPTS)], models[index % len(models)])
            if first is None:
                failed.append(index)
            else:
                firsts.append(first)
                tokens.append(count)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ordered = sorted(firsts)
    return {
        "tokens_per_s": sum(tokens) / seconds,
        "ttft_p50": statistics.median(ordered),
        "ttft_p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "requests": len(firsts),
        "failed": len(failed),
    }


class HealthProbe:
    """/health every 50 ms from a thread of its own, while the load runs."""

    def __init__(self, url: str):
        self.url, self.seconds, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self._probe)
        self.thread.start()

    def _probe(self) -> None:
        with httpx.Client() as client:
            while not self.stop.wait(0.05):
                started = time.perf_counter()
                client.get(f"{self.url}/health", timeout=10)
                self.seconds.append(time.perf_counter() - started)

    def p99(self) -> float:
        self.stop.set()
        self.thread.join()
        ordered = sorted(self.seconds)
        return ordered[int(0.99 * (len(ordered) - 1))]


PEER = """
import json, sys, time, torch
from peft import PeftModel
from transformers import AutoTokenizer, GenerationConfig
from tuneledger.models import modeling
base, adapter, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompts = json.loads(sys.stdin.read())
tokenizer = AutoTokenizer.from_pretrained(base)
model = PeftModel.from_pretrained(modeling.load_base(base, "cpu"), adapter).merge_and_unload().eval()
ids = [
    tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
    for p in prompts
]
eos = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
config = GenerationConfig(
    max_new_tokens=tokens, do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
)
started = time.perf_counter()
out = model.generate_batch(ids, generation_config=config)
peer = sum(len(r.generated_tokens) for r in out.values()) / (time.perf_counter() - started)
tokenizer.padding_side = "left"
batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
started = time.perf_counter()
with torch.inference_mode():
    generated = model.generate(**batch, generation_config=config)
seconds = time.perf_counter() - started
new = generated[:, batch["input_ids"].shape[1]:]
done = (new == eos[0]).int().cumsum(-1) > 0
limit = int((~done).sum() + done.any(-1).sum()) / seconds
print(json.dumps({"peer": peer, "limit": limit}))
"""


def peer_and_limit(repo: Path) -> dict:
    """transformers' continuous batching and one padded generate, on the merged v1.0.0, 16 prompts."""
    done = subprocess.run(
        [sys.executable, "-c", PEER, str(smollm2_dir()), str(repo / "models/export"), str(TOKENS)],
        input=json.dumps(PROMPTS),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def rollback_seconds(repo: Path, url: str, versions: list[str]) -> float:
    """Seconds from a rollback's tag to /health naming the previous holder (resident: no download)."""
    sh("tuneledger", "promote", versions[1], "--stage", "prod", "--force", "--reason", "bench", cwd=repo)
    while httpx.get(f"{url}/health").json()["version"] != versions[1]:
        time.sleep(0.02)
    ask(url, PROMPTS[0], "lora-adapter")
    sh("tuneledger", "rollback", "--stage", "prod", "--reason", "bench", cwd=repo)
    moved = time.perf_counter()
    while httpx.get(f"{url}/health").json()["version"] != versions[0]:
        time.sleep(0.01)
    return time.perf_counter() - moved


def run(ctx: dict) -> dict:
    repo, s3, versions = build(ctx["work"])
    try:
        return measure(repo, versions)
    finally:
        s3.stop()


def measure(repo: Path, versions: list[str]) -> dict:
    figures: dict[str, dict] = {}
    # Deadlines long enough for the slowest contender: every request is answered, none times out.
    one, one_url, _, _ = start_server(repo, "--max-batch", "1", "--request-timeout", "900")
    try:
        for clients in CLIENTS:
            figures[f"one {clients}"] = load(one_url, clients, ["lora-adapter"])
    finally:
        one.terminate()
        one.wait()
    batched, url, _, _ = start_server(repo, "--request-timeout", "900")
    try:
        probe = HealthProbe(url)
        for clients in CLIENTS:
            figures[f"batched {clients}"] = load(url, clients, ["lora-adapter"])
        mixed_models = [f"lora-adapter@{v}" for v in versions]
        figures["mixed 16"] = load(url, 16, mixed_models)
        figures["single 16"] = load(url, 16, [mixed_models[0]])
        health_p99 = probe.p99()
        rollback = rollback_seconds(repo, url, versions)
    finally:
        batched.terminate()
        batched.wait()
    reference = peer_and_limit(repo)
    return report(figures, reference, health_p99, rollback)


def report(figures: dict, reference: dict, health_p99: float, rollback: float) -> dict:
    rows = []
    for clients in CLIENTS:
        for name in ("one", "batched"):
            f = figures[f"{name} {clients}"]
            label = "one at a time (--max-batch 1)" if name == "one" else "batched server"
            rows.append(
                (
                    f"{label}, {clients} client(s)",
                    f"{f['tokens_per_s']:.1f} tokens/s",
                    f"TTFT p50 {f['ttft_p50'] * 1000:.0f} ms, p95 {f['ttft_p95'] * 1000:.0f} ms; "
                    f"{f['requests']} requests, {f['failed']} failed",
                )
            )
    rows += [
        (
            "transformers `generate_batch` (continuous batching), 16 prompts",
            f"{reference['peer']:.1f} tokens/s",
            "merged adapter, in process, no HTTP",
        ),
        (
            "one padded `model.generate`, 16 prompts (the limit)",
            f"{reference['limit']:.1f} tokens/s",
            "merged adapter, in process, no HTTP",
        ),
        (
            "3 versions mixed, 16 clients",
            f"{figures['mixed 16']['tokens_per_s']:.1f} tokens/s",
            "peft mixed-adapter batches",
        ),
        ("1 version, 16 clients (same run)", f"{figures['single 16']['tokens_per_s']:.1f} tokens/s", ""),
        ("/health p99 while serving", f"{health_p99 * 1000:.1f} ms", "goal < 100 ms"),
        ("rollback live (previous holder resident)", f"{rollback:.3f} s", "tag to /health; goal ≤ 1 s"),
    ]
    batched16, one16 = figures["batched 16"]["tokens_per_s"], figures["one 16"]["tokens_per_s"]
    ttft = figures["batched 16"]["ttft_p95"] / figures["batched 1"]["ttft_p95"]
    mixed = figures["mixed 16"]["tokens_per_s"] / figures["single 16"]["tokens_per_s"]
    return {
        "title": "Serving many versions (SmolLM2-135M)",
        "rows": rows,
        "ratios": [
            (
                "batched vs one-at-a-time throughput, 16 clients",
                batched16 / one16,
                batched16 / one16,
                batched16 / one16,
                "≥ 5",
            ),
            (
                "batched server vs generate_batch throughput",
                batched16 / reference["peer"],
                batched16 / reference["peer"],
                batched16 / reference["peer"],
                "≥ 0.8",
            ),
            ("3 versions mixed vs 1 version throughput", mixed, mixed, mixed, "≥ 0.7"),
            ("TTFT p95, 16 clients vs 1", ttft, ttft, ttft, "≤ 3"),
        ],
        "notes": (
            "One run each (a 16-client round of 64 tokens takes tens of seconds here). The one-at-a-time "
            "row is the same server with --max-batch 1: one request generates while the others wait. "
            "The batched server admits queued requests into its running batch between steps "
            "(continuous batching). "
            "generate_batch and the padded generate run in a process of their own on the merged adapter "
            "and report throughput only (no streaming, so no time to first token)."
        ),
    }
