"""`laddertune serve` against a live server on 127.0.0.1, through httpx: every endpoint,
streaming, mixed-task concurrency, every bad request, the limits, and shutdown by SIGTERM.

Each server is a real `laddertune serve` subprocess on a free port; every request loop is
bounded in count, and every wait in time.
"""

import asyncio
import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_models import save_tiny_lm, symbol_pairs, topic_rows, write_csv

from laddertune.app.cli import main

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).parents[2] / "src")
TEXTS = ["goal the match team", "phone chip new code today", "bank market the",
         "score in the league of big profit"]
TOPICS = ["sport", "money"]          # the "duo" run's labels: another task on the same texts
# Served answers come from batches padded to other texts' lengths; predict's from its own
# batches. The same numbers up to float summation order; predict prints 6 decimals.
PROBS = 2e-5
STARTUP_S = 180


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    save_tiny_lm(root / "lm", "gpt2", chat_template=True)
    save_tiny_lm(root / "other-lm", "gpt2", seed=1)
    write_csv(root / "topics.csv", topic_rows(48, seed=0))
    write_csv(root / "duo.csv", topic_rows(48, seed=1, topics=TOPICS))
    write_csv(root / "pairs.csv", symbol_pairs(64, seed=0, length=2))
    write_csv(root / "texts.csv", [{"text": t} for t in TEXTS])
    common = ["--epochs", "1", "--batch-size", "16", "--no-progress", "--device", "cpu",
              "--reduction-factor", "2"]
    for out, model, data, extra in (
            ("topics", "lm", "topics.csv", []), ("duo", "lm", "duo.csv", ["--seed", "3"]),
            ("chat", "lm", "pairs.csv", ["--task", "generate", "--chat-template"]),
            ("stranger", "other-lm", "topics.csv", []),
            ("half", "lm", "topics.csv", ["--backbone-dtype", "bfloat16"]),
            ("lora-a", "lm", "topics.csv", ["--method", "lora"]),
            ("lora-b", "lm", "topics.csv", ["--method", "lora", "--seed", "5"])):
        assert main(["train", "--model", str(root / model), "--train", str(root / data),
                     "--output", str(root / out), *common, *extra]) == 0
    return root


class Server:
    """A `laddertune serve` subprocess on a free port of 127.0.0.1."""

    def __init__(self, runs, *flags, checkpoints=("topics", "duo", "chat")):
        command = [sys.executable, "-m", "laddertune.app.cli", "serve", "--port", "0",
                   "--device", "cpu", "--checkpoint",
                   *(f"{name}={runs / name}" for name in checkpoints), *flags]
        env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.output = []
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            if "listening on http://" in line:
                self.url = line.split("listening on ")[1].strip()
                self.client = httpx.Client(base_url=self.url, timeout=60)
                return
        self.stop()
        raise AssertionError("the server did not start:\n" + "".join(self.output[-30:]))

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(runs):
    live = Server(runs, "--max-wait-ms", "30", "--max-new-tokens-limit", "8")
    yield live
    live.client.close()
    assert live.stop() == 0


def _predict(runs, run) -> list[dict]:
    out = runs / f"predictions-{run}.csv"
    assert main(["predict", "--checkpoint", str(runs / run), "--data", str(runs / "texts.csv"),
                 "--output", str(out), "--device", "cpu"]) == 0
    with open(out) as handle:
        return list(csv.DictReader(handle))


# ---- endpoints -------------------------------------------------------------------------------

def test_health_and_models_list_every_task_with_its_kind_and_labels(server):
    assert server.client.get("/health").json()["status"] == "ok"
    models = {m["id"]: m for m in server.client.get("/v1/models").json()["data"]}
    assert set(models) == {"topics", "duo", "chat"}
    assert models["topics"]["kind"] == "classify" and models["chat"]["kind"] == "generate"
    assert sorted(models["duo"]["labels"]) == sorted(TOPICS)
    assert models["chat"]["chat"] is True


def test_classify_answers_as_predict_does_for_several_tasks_in_one_pass(server, runs):
    passes = server.client.get("/health").json()["backbone_passes"]
    answer = server.client.post("/v1/classify", json={"model": ["topics", "duo"],
                                                      "input": TEXTS})
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "list"
    assert [(d["index"], d["model"]) for d in body["data"]] == [
        (i, name) for i in range(len(TEXTS)) for name in ("topics", "duo")]
    assert server.client.get("/health").json()["backbone_passes"] == passes + 1
    for run in ("topics", "duo"):
        expected = _predict(runs, run)
        served = [d for d in body["data"] if d["model"] == run]
        for row, item in zip(expected, served):
            assert item["label"] == row["label"]
            for label, p in item["probs"].items():
                assert abs(p - float(row[f"prob_{label}"])) < PROBS


def test_completions_and_chat_answer_as_laddertune_generate_does(server, runs, capsys):
    prompt = "copy gold pink"
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(runs / "chat"), "--prompt", prompt,
                 "--device", "cpu"]) == 0
    expected = capsys.readouterr().out.strip()
    text = server.client.post("/v1/completions", json={"model": "chat", "prompt": prompt})
    assert text.status_code == 200
    assert text.json()["choices"][0]["text"] == expected
    chat = server.client.post("/v1/chat/completions", json={
        "model": "chat", "messages": [{"role": "user", "content": prompt}]})
    assert chat.json()["choices"][0]["message"] == {"role": "assistant", "content": expected}


def test_streaming_sends_the_same_text_as_server_sent_events(server):
    request = {"model": "chat", "prompt": "reverse red blue", "max_tokens": 6}
    whole = server.client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    with server.client.stream("POST", "/v1/completions", json={**request, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    with server.client.stream("POST", "/v1/chat/completions", json={
            "model": "chat", "messages": [{"role": "user", "content": "reverse red blue"}],
            "max_tokens": 6, "stream": True}) as r:
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("content", "") for d in deltas) == whole


def test_max_tokens_is_capped_by_the_limit(server):
    body = server.client.post("/v1/completions", json={"model": "chat", "prompt": "copy red",
                                                       "max_tokens": 50}).json()
    assert body["usage"]["completion_tokens"] <= 8
    assert "capped" in body["warning"]


def test_mixed_tasks_sent_at_once_share_batches_and_answer_as_alone(server):
    requests = [{"model": names, "input": [TEXTS[i % 4]]}
                for i, names in enumerate([["topics"], ["duo"], ["topics", "duo"]] * 8)]
    alone = [server.client.post("/v1/classify", json=r).json()["data"] for r in requests]
    before = server.client.get("/health").json()["backbone_passes"]

    async def send_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            generation = client.post("/v1/completions", json={"model": "chat",
                                                              "prompt": "copy red"})
            answers = await asyncio.gather(generation,
                                           *(client.post("/v1/classify", json=r)
                                             for r in requests))
        return answers

    answers = asyncio.run(asyncio.wait_for(send_all(), 120))
    assert all(a.status_code == 200 for a in answers)
    passes = server.client.get("/health").json()["backbone_passes"] - before
    assert passes < len(requests)                   # requests shared backbone passes
    for answer, want in zip(answers[1:], alone):
        got = answer.json()["data"]
        assert [(g["model"], g["label"]) for g in got] == [(w["model"], w["label"]) for w in want]
        for g, w in zip(got, want):
            for label in w["probs"]:
                assert abs(g["probs"][label] - w["probs"][label]) < 1e-5


def test_greedy_completions_sent_at_once_share_a_generation_and_answer_as_alone(server):
    prompts = ["copy red blue", "reverse gold pink", "copy green", "reverse red gray blue",
               "copy pink pink", "reverse blue"]
    alone = [server.client.post("/v1/completions", json={"model": "chat", "prompt": p}
                                ).json()["choices"][0]["text"] for p in prompts]
    before = server.client.get("/health").json()["completion_batches"]

    async def send_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json={
                "model": "chat", "prompt": p}) for p in prompts))

    answers = asyncio.run(asyncio.wait_for(send_all(), 120))
    assert [a.json()["choices"][0]["text"] for a in answers] == alone
    assert server.client.get("/health").json()["completion_batches"] - before < len(prompts)


def test_tasks_load_and_unload_while_serving_and_another_backbone_is_refused(server, runs):
    loaded = server.client.post("/v1/models", json={"name": "topics2",
                                                    "checkpoint": str(runs / "topics")})
    assert loaded.status_code == 201 and loaded.json()["kind"] == "classify"
    both = server.client.post("/v1/classify", json={"model": ["topics", "topics2"],
                                                    "input": TEXTS[:1]}).json()["data"]
    assert both[0]["probs"] == pytest.approx(both[1]["probs"], abs=1e-6)
    assert server.client.delete("/v1/models/topics2").json()["deleted"] is True
    assert server.client.post("/v1/classify", json={"model": "topics2",
                                                    "input": "x"}).status_code == 404
    refused = server.client.post("/v1/models", json={"name": "stranger",
                                                     "checkpoint": str(runs / "stranger")})
    assert refused.status_code == 409 and "another backbone" in refused.json()["error"]["message"]
    assert server.client.delete("/v1/models/nope").status_code == 404


BAD_REQUESTS = [
    ("unknown model", "/v1/classify", {"model": "nope", "input": ["a"]}, 404),
    ("unknown completion model", "/v1/completions", {"model": "nope", "prompt": "a"}, 404),
    ("model of the wrong type", "/v1/classify", {"model": 3, "input": ["a"]}, 400),
    ("input of the wrong type", "/v1/classify", {"model": "topics", "input": [1, 2]}, 400),
    ("max_tokens of the wrong type", "/v1/completions",
     {"model": "chat", "prompt": "a", "max_tokens": "many"}, 400),
    ("stream of the wrong type", "/v1/completions",
     {"model": "chat", "prompt": "a", "stream": "yes"}, 400),
    ("empty input list", "/v1/classify", {"model": "topics", "input": []}, 400),
    ("empty text", "/v1/classify", {"model": "topics", "input": ["  "]}, 400),
    ("empty prompt", "/v1/completions", {"model": "chat", "prompt": ""}, 400),
    ("no messages", "/v1/chat/completions", {"model": "chat", "messages": []}, 400),
    ("a text past --max-length", "/v1/classify",
     {"model": "topics", "input": ["goal " * 400]}, 400),
    ("a classify task asked to generate", "/v1/completions",
     {"model": "topics", "prompt": "a"}, 400),
    ("a generate task asked to classify", "/v1/classify", {"model": "chat", "input": ["a"]},
     400),
    ("a body that is not an object", "/v1/classify", ["topics"], 400),
]


@pytest.mark.parametrize("case, path, body, status", BAD_REQUESTS,
                         ids=[case for case, *_ in BAD_REQUESTS])
def test_a_bad_request_gets_its_4xx_as_json_and_the_server_serves_on(server, case, path, body,
                                                                     status):
    answer = server.client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["message"]
    assert server.client.post("/v1/classify", json={"model": "topics",
                                                    "input": ["goal"]}).status_code == 200


def test_malformed_json_and_an_oversized_body_are_refused(server):
    answer = server.client.post("/v1/classify", content=b'{"model": "topics", "input": [',
                                headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]["message"]
    huge = json.dumps({"model": "topics", "input": ["sport"] * 300_000})
    answer = server.client.post("/v1/classify", content=huge,
                                headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "max-body-bytes" in answer.json()["error"]["message"]
    assert server.client.get("/nowhere").json()["error"]["code"] == 404
    assert server.client.get("/health").status_code == 200


# ---- limits and shutdown ---------------------------------------------------------------------

def test_a_full_queue_answers_429_and_a_slow_answer_503(runs):
    live = Server(runs, "--max-queue", "2", "--timeout", "0.5", "--max-wait-ms", "2000",
                  checkpoints=("topics",))
    try:
        async def flood():
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
                return await asyncio.gather(*(client.post(
                    "/v1/classify", json={"model": "topics", "input": TEXTS})
                    for _ in range(12)))

        statuses = [a.status_code for a in asyncio.run(asyncio.wait_for(flood(), 60))]
        assert set(statuses) == {429, 503}, statuses
        assert live.client.get("/health").status_code == 200
    finally:
        live.client.close()
        live.stop()


def test_sigterm_drains_the_requests_in_flight_and_exits_0(runs):
    live = Server(runs, "--max-wait-ms", "1500", checkpoints=("topics",))
    answers = []
    sender = threading.Thread(target=lambda: answers.append(live.client.post(
        "/v1/classify", json={"model": "topics", "input": TEXTS})))
    sender.start()
    time.sleep(0.5)                    # the request waits in its batch for 1.5 s
    live.process.send_signal(signal.SIGTERM)
    sender.join(timeout=60)
    assert live.process.wait(timeout=60) == 0
    assert answers and answers[0].status_code == 200
    assert len(answers[0].json()["data"]) == len(TEXTS)
    live.client.close()


# ---- the PEFT LoRA pool, the benchmark's baseline ------------------------------------------

def test_lora_runs_are_served_as_adapters_of_one_base_model_through_adapter_names(runs):
    import torch

    from laddertune.app.serve.pool import TaskPool
    pool = TaskPool([("a", str(runs / "lora-a")), ("b", str(runs / "lora-b"))],
                    torch.device("cpu"))
    ids = pool.tokenizer(TEXTS)["input_ids"]
    answers = pool.classify([(row, ["a", "b"]) for row in ids], max_batch_size=8)
    assert pool.backbone_passes == 1
    for name, run in (("a", "lora-a"), ("b", "lora-b")):
        for answer, row in zip(answers, _predict(runs, run)):
            for label, p in zip(pool.tasks[name].labels, answer[name]):
                assert abs(p - float(row[f"prob_{label}"])) < PROBS


# ---- a reduced backbone ----------------------------------------------------------------------

def test_runs_trained_on_a_bf16_backbone_are_served_on_one(runs, recwarn):
    """The server stores its backbone as its first run trained on it: no warning about another
    dtype, and predict's answers (predict rebuilds the run's backbone too)."""
    import torch

    from laddertune import quant
    from laddertune.app.serve.pool import TaskConflict, TaskPool
    pool = TaskPool([("half", str(runs / "half"))], torch.device("cpu"))
    assert pool.backbone_dtype == "bfloat16"
    assert quant.stored_dtype(pool.backbone) == "bfloat16"
    assert not [w for w in recwarn if "trained on a" in str(w.message)]
    ids = pool.tokenizer(TEXTS)["input_ids"]
    answers = pool.classify([(row, ["half"]) for row in ids], max_batch_size=8)
    for answer, row in zip(answers, _predict(runs, "half")):
        for label, p in zip(pool.tasks["half"].labels, answer["half"]):
            # bf16 kernels (where the CPU has them) round by the batch's padding
            assert abs(p - float(row[f"prob_{label}"])) < 2e-3
    with pytest.raises(TaskConflict, match="stored in float32, and this server's is bfloat16"):
        pool.load("topics", str(runs / "topics"))


# ---- the command line ------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoints, words", [
    (["nowhere"], "is not a folder"),
    (["a={topics}", "a={duo}"], "names 'a' twice"),
    (["{topics}", "other={stranger}"], "another backbone"),
    (["{topics}", "{half}"], "stored in bfloat16, and this server's is float32"),
])
def test_serve_refuses_runs_it_cannot_serve_in_one_line(runs, capsys, checkpoints, words):
    given = [c.format(topics=runs / "topics", duo=runs / "duo", stranger=runs / "stranger",
                      half=runs / "half") for c in checkpoints]
    capsys.readouterr()
    assert main(["serve", "--device", "cpu", "--checkpoint", *given]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.startswith("error: ") and "\n" not in err
