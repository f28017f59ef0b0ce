"""Sixteen tasks served by one warm `laddertune serve` process: LST side networks on one
backbone pass against PEFT LoRA adapters run by `adapter_names`, through the same server code.

For each backbone and arm: one run trained briefly with `laddertune train` (a few steps on a
BBC News subset), then served under 16 names (`--checkpoint task00=RUN`, then 15 more loaded
with POST /v1/models). Each name is its own side network (or adapter) in memory; their weights
are the same, which changes nothing a serving cost depends on. Measured over HTTP:

- resident memory (VmRSS) of the server with 1 task, then with 16;
- latency of one request naming k = 1, 4, 16 tasks on the same text (median of --repeats);
- throughput and p50/p95 latency of --requests one-text requests sent --concurrency at a time,
  spread over the first 1, 4 or 16 tasks.

    python benchmarks/serve_bench.py --models minilm,smollm2 --output benchmarks/results/serve
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from data import DataSpec, write_data

ROOT = Path(__file__).resolve().parents[1]
SPEC = DataSpec("bbc-news", 64, 32, 64, 32, "BBC News subset: serving cost, not accuracy")
TASKS = 16
WORDS = 12           # words kept of each test article
ARMS = ("lst", "lora")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "laddertune.app.cli", *args]


def environment(threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads)}


def train(model: str, method: str, paths: dict, out: Path, threads: int) -> Path:
    """One briefly trained run (4 steps of 16): the serving cost is what is measured."""
    if (out / "metrics.json").is_file():
        return out
    subprocess.run(cli("train", "--model", model, "--method", method, "--train",
                       str(paths["train"]), "--eval", str(paths["dev"]), "--epochs", "1",
                       "--batch-size", "16", "--max-length", str(SPEC.max_length), "--output",
                       str(out), "--overwrite", "--no-progress", "--device", "cpu"),
                   env=environment(threads), check=True)
    return out


class Server:
    """`laddertune serve` on a free port of 127.0.0.1, in its own process."""

    def __init__(self, run: Path, threads: int, concurrency: int):
        self.process = subprocess.Popen(
            cli("serve", "--checkpoint", f"task00={run}", "--port", "0", "--device", "cpu",
                "--max-batch-size", str(max(concurrency, TASKS)), "--max-wait-ms", "5",
                "--timeout", "600"),
            env=environment(threads), stdout=subprocess.PIPE, text=True)
        for line in self.process.stdout:
            if "listening on " in line:
                self.url = line.split("listening on ")[1].strip()
                break
        else:
            raise RuntimeError(f"the server did not start (exit {self.process.wait()})")
        self.client = httpx.Client(base_url=self.url, timeout=600)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def classify(self, names, texts) -> float:
        """Seconds for one classify request."""
        start = time.perf_counter()
        answer = self.client.post("/v1/classify", json={"model": names, "input": texts})
        answer.raise_for_status()
        return time.perf_counter() - start

    def stop(self) -> int:
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=300)


async def _load(url: str, requests: list[dict], concurrency: int) -> tuple[float, list[float]]:
    """(wall seconds, per-request seconds) of `requests`, `concurrency` in flight at once."""
    gate = asyncio.Semaphore(concurrency)
    latencies = []

    async def one(client, body):
        async with gate:
            start = time.perf_counter()
            answer = await client.post("/v1/classify", json=body)
            answer.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, body) for body in requests))
        return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(model: str, runs: dict[str, Path], texts: list[str], args) -> list[dict]:
    """Every arm's figures, its servers up at once and measured in turn, setting by setting:
    on a shared machine, load that drifts during the run then falls on every arm alike."""
    servers = {arm: Server(run, args.threads, args.concurrency) for arm, run in runs.items()}
    names = [f"task{i:02d}" for i in range(TASKS)]
    figures = {arm: {"model": model, "arm": arm, "same_text_ms": {}, "load": {}}
               for arm in servers}
    try:
        for arm, server in servers.items():
            server.classify(["task00"], texts[:2])                      # warm
            figures[arm]["rss_mib_1_task"] = server.rss_mib()
            for name in names[1:]:
                server.client.post("/v1/models", json={"name": name, "checkpoint": str(runs[arm])}
                                   ).raise_for_status()
            server.classify(names, texts[:2])                           # every task warm
            figures[arm]["rss_mib_16_tasks"] = server.rss_mib()
        # every k in every repeat, arm after arm: the ratios of k=16 to k=1 then compare
        # requests made moments apart, not minutes apart under another load
        times = {(arm, k): [] for arm in servers for k in (1, 4, 16)}
        for arm, k in times:
            servers[arm].classify(names[:k], texts[:1])
        for _ in range(args.repeats):
            for k in (1, 4, 16):
                for arm, server in servers.items():
                    times[arm, k].append(server.classify(names[:k], texts[:1]))
        for (arm, k), seconds in times.items():
            figures[arm]["same_text_ms"][k] = statistics.median(seconds) * 1000
        for k in (1, 4, 16):
            requests = [{"model": names[i % k], "input": [texts[i % len(texts)]]}
                        for i in range(args.requests)]
            for arm, server in servers.items():
                wall, latencies = asyncio.run(_load(server.url, requests, args.concurrency))
                figures[arm]["load"][k] = {"requests_per_s": args.requests / wall,
                                           "p50_ms": percentile(latencies, 0.5) * 1000,
                                           "p95_ms": percentile(latencies, 0.95) * 1000}
        for arm, server in servers.items():
            figures[arm]["backbone_passes"] = server.client.get("/health").json()[
                "backbone_passes"]
    finally:
        for arm, server in servers.items():
            figures[arm]["sigterm_exit"] = server.stop()
    return list(figures.values())


def report(results: list[dict], args, command: str) -> str:
    lines = [
        "# Serving 16 tasks from one process: LST side networks vs PEFT LoRA adapters", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared "
        f"with other jobs (timings are noisy), torch {torch.__version__}, {args.threads} "
        f"thread(s); {time.strftime('%Y-%m-%d')}. Command: `{command}`.", "",
        "Tasks: per backbone and arm, one run trained briefly (`laddertune train`, 1 epoch of "
        f"{SPEC.train_size} BBC News examples, {SPEC.max_length} tokens: 4 steps) and served "
        "under 16 names, each its own side network (LST) or LoRA adapter (r=32, all linear "
        "layers, through PEFT's `adapter_names`) in memory. The same server code serves both "
        "arms; both servers run at once and are measured in turn, setting by setting, so load "
        f"from other jobs falls on both alike. Requests: one text each, {args.requests} per "
        f"setting, {args.concurrency} in "
        "flight at once, spread round-robin over the first k tasks; the texts are the first "
        f"{WORDS} words of BBC News test articles.", "",
        "| backbone | arm | RSS 1 task MiB | RSS 16 tasks MiB | 16/1 | k=1 ms | k=4 ms | "
        "k=16 ms | k=16/k=1 | req/s 1 task | req/s 4 | req/s 16 | 16/1 | p50 ms (16) | "
        "p95 ms (16) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, load = r["same_text_ms"], r["load"]
        lines.append(
            f"| {r['model']} | {r['arm']} | {r['rss_mib_1_task']:.0f} | "
            f"{r['rss_mib_16_tasks']:.0f} | {r['rss_mib_16_tasks'] / r['rss_mib_1_task']:.2f}× | "
            f"{s[1]:.1f} | {s[4]:.1f} | {s[16]:.1f} | {s[16] / s[1]:.2f}× | "
            f"{load[1]['requests_per_s']:.1f} | {load[4]['requests_per_s']:.1f} | "
            f"{load[16]['requests_per_s']:.1f} | "
            f"{load[16]['requests_per_s'] / load[1]['requests_per_s']:.2f}× | "
            f"{load[16]['p50_ms']:.0f} | {load[16]['p95_ms']:.0f} |")
    lines += ["", "p50/p95 latency at 1 and 4 tasks are in results.json.", "", "## Targets", "",
              "| target | measured | met? |", "|---|---|---|"]
    for r in results:
        if r["arm"] != "lst":
            continue
        s, load = r["same_text_ms"], r["load"]
        rows = [(f"{r['model']}: k=16 tasks on one text ≤ 1.5× one task's latency",
                 s[16] / s[1], 1.5, "le"),
                (f"{r['model']}: throughput with 16 mixed tasks ≥ 0.8× one task's",
                 load[16]["requests_per_s"] / load[1]["requests_per_s"], 0.8, "ge")]
        if r["model"] == "minilm":
            rows.insert(1, ("minilm: resident memory of 16 tasks ≤ 1.3× one task's",
                            r["rss_mib_16_tasks"] / r["rss_mib_1_task"], 1.3, "le"))
        for text, value, bound, way in rows:
            met = value <= bound if way == "le" else value >= bound
            lines.append(f"| {text} | {value:.2f}× | {'yes' if met else 'no'} |")
    lora = {r["model"]: r["same_text_ms"] for r in results if r["arm"] == "lora"}
    for model, s in lora.items():
        lines.append(f"| {model}: PEFT LoRA, k=16 on one text, for the ratio | "
                     f"{s[16] / s[1]:.2f}× | (reference) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/serve-bench", help="where the runs are trained")
    parser.add_argument("--output", default="benchmarks/results/serve")
    args = parser.parse_args()
    work, output = Path(args.work), Path(args.output)
    paths = write_data(SPEC, work / "data")
    with open(paths["test"], newline="", encoding="utf-8") as handle:
        # the first words of each article: every text fits the runs' max length, unrefused
        texts = [" ".join(row["text"].split()[:WORDS]) for row in csv.DictReader(handle)]
    results = []
    for model in args.models.split(","):
        runs = {arm: train(model, arm, paths, work / f"{model}-{arm}", args.threads)
                for arm in args.arms.split(",")}
        results += measure(model, runs, texts, args)
        print(json.dumps(results[-len(runs):]), flush=True)
    output.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(sys.argv)
    (output / "results.json").write_text(json.dumps(
        {"command": command, "threads": args.threads, "requests": args.requests,
         "concurrency": args.concurrency, "results": results}, indent=2) + "\n")
    (output / "results.md").write_text(report(results, args, command))


if __name__ == "__main__":
    main()
