"""Load, soak and faults against a real ``tangentft serve`` process on 127.0.0.1, driven by locust (issue #23).

    nice -n 10 python benchmarks/serve_load.py --model smollm2-135m --duration 300 --out benchmarks/results/serve_load.json
    python benchmarks/serve_load.py --quick --out /tmp/serve_load.json          # tiny-llama, < 60 s

What it does, bounded in count and time, and stops by itself:

1. Starts ``tangentft serve`` (base + ``--s2ft`` S2FT and ``--lora`` LoRA adapters, made by
   ``serve_adapters.py`` in their own process unless ``--adapter NAME=PATH`` are given; ``--max-queue``,
   an API key) on a free loopback port, and waits for /health.
2. Warm-up: the largest user count for ``--warmup`` s (every allocation the soak will need is made), then
   the server's RSS is read (``/proc/PID/status``).
3. For each level (users 8, 32, 128) ``--duration`` s of locust users (closed loop): greedy completions and
   streamed greedy chat over the base and every adapter, /v1/classify, and interleaved faults — clients
   that disconnect mid-stream, malformed and oversized bodies, unknown adapters, unhonoured fields, a wrong
   API key — while one churn user loads and unloads an adapter. Queue depth is sampled from /metrics once
   a second (a full queue answers 429; the depth must stay ≤ ``--max-queue``).
4. RSS again (after the soak), then ``--sample`` distinct greedy requests answered under load are sent
   again one at a time, alone: the text must be equal.
5. SIGTERM while streams are in flight: the server must exit by itself, every in-flight request finishing
   or getting an error, none hanging.

Pass criteria (recorded with the figures in ``--out``): no 5xx and no connection failure; every sampled
greedy answer equal to the same request served alone; RSS after the soak within 5% of after warm-up; queue
depth never above ``--max-queue`` (429s instead); a clean SIGTERM stop. Per level: p50/p95/p99 latency per
request kind and generated tokens/s. locust is imported first: it monkey-patches the standard library with
gevent, so this process never imports torch (the adapters are made in a child process).
"""

from locust import HttpUser, events, task  # noqa: I001 — first: gevent patches the standard library

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
import requests
from locust.env import Environment

KEY = "load-test-key"
LEVELS = (8, 32, 128)
WORDS = "good bad movie plot actor boring fun dull superb story music slow great mess".split()
PROMPTS = [" ".join(random.Random(i).sample(WORDS, 2 + i % 4)) for i in range(40)]  # few, so requests repeat
MAX_TOKENS = (4, 8, 12)

STATE: dict = {"records": [], "level": "warmup", "models": [], "classify": [], "churn": None}


def record(kind: str, status: int, started: float, **extra) -> None:
    """One answered request (status 0: no HTTP answer at all)."""
    STATE["records"].append({"level": STATE["level"], "kind": kind, "status": status,
                             "seconds": time.perf_counter() - started, **extra})


def headers(key: str = KEY) -> dict:
    """JSON request headers with the API key ``key``."""
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


class Client(HttpUser):
    """A user: mostly greedy completions and streamed chat over the base and adapters, some classify, a few
    faults."""

    wait_time = staticmethod(lambda: random.uniform(0.0, 0.2))

    def post(self, kind: str, route: str, body, key: str = KEY, **extra):
        started = time.perf_counter()
        data = body if isinstance(body, bytes) else json.dumps(body)
        with self.client.post(route, data=data, headers=headers(key), catch_response=True, name=kind) as r:
            status = r.status_code or 0
            text = None
            if status == 200 and kind in ("completion", "classify"):
                payload = r.json()
                extra["tokens"] = payload.get("usage", {}).get("completion_tokens", 0)
                text = payload["choices"][0]["text"] if kind == "completion" else None
            _judge(r, status, extra.pop("expect", (200, 429)))
            record(kind, status, started, text=text, **extra)

    @task(5)
    def completion(self):
        model, prompt, n = random.choice(STATE["models"]), random.choice(PROMPTS), random.choice(MAX_TOKENS)
        self.post("completion", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0},
                  request={"model": model, "prompt": prompt, "max_tokens": n}, expect=_expect(model))

    @task(3)
    def chat_stream(self):
        model, prompt, n = random.choice(STATE["models"]), random.choice(PROMPTS), random.choice(MAX_TOKENS)
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": n, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        with self.client.post("/v1/chat/completions", data=json.dumps(body), headers=headers(), stream=True,
                              catch_response=True, name="chat_stream") as r:
            status, text, tokens, done = r.status_code or 0, [], 0, False
            if status == 200:
                for line in r.iter_lines():
                    if line == b"data: [DONE]":
                        done = True
                    elif line.startswith(b"data: "):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            status = 500  # an error inside a 200 stream counts as a server failure
                        for c in chunk.get("choices", []):
                            text.append(c["delta"].get("content") or "")
                        tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
                if not done and status == 200:
                    status = 0
            _judge(r, status, _expect(model))
            record("chat_stream", status, started, tokens=tokens, text="".join(text) if status == 200 else None,
                   request={"model": model, "prompt": prompt, "max_tokens": n, "chat": True})

    @task(2)
    def classify(self):
        model = random.choice(STATE["classify"])
        body = {"model": model, "input": random.sample(PROMPTS, 2)} | ({} if model in STATE["adapters"] else {"task": "sst2"})
        self.post("classify", "/v1/classify", body, expect=_expect(model))

    @task(1)
    def fault(self):
        kind = random.choice(("disconnect", "malformed", "oversized", "unknown_adapter", "unhonoured_field", "wrong_key"))
        ok = {"model": random.choice(STATE["models"]), "prompt": random.choice(PROMPTS), "max_tokens": 4}
        if kind == "disconnect":
            started = time.perf_counter()
            with self.client.post("/v1/completions", data=json.dumps(ok | {"stream": True, "max_tokens": 64}),
                                  headers=headers(), stream=True, catch_response=True, name="fault_disconnect") as r:
                status = r.status_code or 0
                if status == 200:
                    next(r.iter_lines(), None)  # the first chunk, then hang up
                _judge(r, status, (200, 429))
                r.raw.close()
            record("fault_disconnect", status, started)
        elif kind == "malformed":
            self.post("fault_malformed", "/v1/completions", b'{"model": "x", "prompt": ', expect=(400,))
        elif kind == "oversized":
            self.post("fault_oversized", "/v1/completions", json.dumps(ok | {"prompt": "x" * (2 << 20)}).encode(),
                      expect=(413,))
        elif kind == "unknown_adapter":
            self.post("fault_unknown_adapter", "/v1/completions", ok | {"model": "no-such-adapter"}, expect=(404,))
        elif kind == "unhonoured_field":
            self.post("fault_unhonoured_field", "/v1/completions", ok | {"logprobs": 5}, expect=(400,))
        else:
            self.post("fault_wrong_key", "/v1/completions", ok, key="wrong", expect=(401,))


class Churn(HttpUser):
    """Loads and unloads one adapter, under another name, while the others serve (exactly one such user)."""

    fixed_count = 1
    wait_time = staticmethod(lambda: 0.5)

    @task
    def churn(self):
        name, path = STATE["churn"]
        self.post_status("churn_load", "post", "/v1/adapters", {"name": name, "path": path}, (200, 409))
        gevent.sleep(0.5)
        self.post_status("churn_unload", "delete", f"/v1/adapters/{name}", None, (200, 404))

    def post_status(self, kind, method, route, body, expect):
        started = time.perf_counter()
        with self.client.request(method, route, data=json.dumps(body) if body else None, headers=headers(),
                                 catch_response=True, name=kind) as r:
            _judge(r, r.status_code or 0, expect)
            record(kind, r.status_code or 0, started)


def _expect(model: str) -> tuple:
    """Statuses a request for ``model`` may get: 429 when the queue is full; 404 for the churned adapter."""
    return (200, 429, 404) if STATE["churn"] and model == STATE["churn"][0] else (200, 429)


def _judge(r, status: int, expect: tuple) -> None:
    if status in expect:
        r.success()
    else:
        r.failure(f"status {status}")


# -- the server process ------------------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args, specs: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``tangentft serve`` with the adapters ``specs`` (output to ``log``); the process and its URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "tangentft", "serve", "--model", args.model, "--port", str(port), "--api-key", KEY,
           "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue), "--batch-wait-ms", "5"]
    if args.max_adapters:
        cmd += ["--max-adapters", str(args.max_adapters)]
    for spec in specs:
        cmd += ["--adapter", spec]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + args.start_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with code {proc.returncode} while starting; see {log}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"error: the server did not answer /health within {args.start_timeout} s; see {log}")


def metric(url: str, name: str) -> float:
    """One unlabelled value from the server's /metrics."""
    text = requests.get(url + "/metrics", headers=headers(), timeout=10).text
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), float("nan"))


# -- phases ------------------------------------------------------------------------------------------------
def run_level(url: str, users: int, seconds: float, label: str) -> dict:
    """``users`` locust users for ``seconds``; the queue depth sampled once a second."""
    STATE["level"] = label
    env = Environment(user_classes=[Client, Churn], host=url, events=events)
    runner = env.create_local_runner()
    depths = []

    def sample():
        while True:
            try:
                depths.append(metric(url, "tangentft_queue_depth"))
            except requests.RequestException:
                pass
            gevent.sleep(1.0)

    sampler = gevent.spawn(sample)
    started = time.perf_counter()
    runner.start(users + 1, spawn_rate=min(users + 1, 100))
    gevent.sleep(seconds)
    runner.stop()
    runner.quit()
    sampler.kill()
    seconds = time.perf_counter() - started
    return {"users": users, "seconds": seconds, "max_queue_depth": max(depths, default=0.0), "drain_s": drain(url)}


def drain(url: str, limit: float = 300.0) -> float:
    """Wait until the server has no running or queued request (what the stopped users left behind), so each
    level starts from an idle server; the seconds it took."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        health = requests.get(url + "/health", timeout=10).json()
        if health["running"] == 0 and health["queued"] == 0:
            break
        gevent.sleep(0.5)
    return time.perf_counter() - t0


def summarize(label: str, info: dict) -> dict:
    """A level's figures: statuses per request kind, 5xx, 429, latency percentiles, generated tokens/s."""
    recs = [r for r in STATE["records"] if r["level"] == label]
    statuses = collections.Counter(f"{r['kind']} {r['status']}" for r in recs)
    latency = {}
    for kind in ("completion", "chat_stream", "classify"):
        xs = sorted(r["seconds"] for r in recs if r["kind"] == kind and r["status"] == 200)
        if xs:
            latency[kind] = {f"p{q}_s": xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))] for q in (50, 95, 99)}
            latency[kind]["n"] = len(xs)
    tokens = sum(r.get("tokens", 0) for r in recs if r["status"] == 200)
    return {**info, "requests": len(recs), "statuses": dict(sorted(statuses.items())),
            "5xx": sum(1 for r in recs if r["status"] >= 500), "no_answer": sum(1 for r in recs if r["status"] == 0),
            "429": sum(1 for r in recs if r["status"] == 429), "latency": latency,
            "completion_tokens": tokens, "tokens_per_s": tokens / info["seconds"]}


def replay(url: str, n: int, seed: int, limit_s: float) -> dict:
    """Send ``n`` distinct greedy requests answered under load again, one at a time, for at most ``limit_s``
    seconds; count differing texts."""
    answered = {}
    for r in STATE["records"]:
        if r.get("request") and r["status"] == 200 and r["text"] is not None and r["level"] != "warmup":
            answered.setdefault(json.dumps(r["request"], sort_keys=True), []).append(r["text"])
    keys = sorted(answered)
    random.Random(seed).shuffle(keys)
    keys = [k for k in keys if json.loads(k)["model"] != (STATE["churn"] or [""])[0]][:n]
    mismatches, t0, checked = [], time.perf_counter(), []
    for k in keys:
        if time.perf_counter() - t0 > limit_s:
            break
        checked.append(k)
        req = json.loads(k)
        body = {"model": req["model"], "max_tokens": req["max_tokens"], "temperature": 0}
        if req.get("chat"):
            body["messages"] = [{"role": "user", "content": req["prompt"]}]
            alone = requests.post(url + "/v1/chat/completions", json=body, headers=headers(), timeout=300).json()
            text = alone["choices"][0]["message"]["content"]
        else:
            alone = requests.post(url + "/v1/completions", json=body | {"prompt": req["prompt"]}, headers=headers(),
                                  timeout=300).json()
            text = alone["choices"][0]["text"]
        for under_load in answered[k]:
            if under_load != text:
                mismatches.append({"request": req, "alone": text, "under_load": under_load})
    return {"checked_requests": len(checked), "checked_answers": sum(len(answered[k]) for k in checked),
            "distinct_greedy_answered": len(answered), "seconds": time.perf_counter() - t0,
            "mismatches": len(mismatches), "examples": mismatches[:5]}


def sigterm(proc: subprocess.Popen, url: str, streams: int, timeout: float) -> dict:
    """SIGTERM with ``streams`` streamed completions in flight: how each ended and how the server exited
    (uvicorn re-raises SIGTERM once its graceful shutdown is done, so exiting by itself reads -15)."""
    outcomes = []

    def stream(i):
        body = {"model": STATE["models"][i % len(STATE["models"])], "prompt": PROMPTS[i], "max_tokens": 24,
                "temperature": 0, "stream": True}
        try:
            with requests.post(url + "/v1/completions", json=body, headers=headers(), stream=True, timeout=timeout) as r:
                lines = [line for line in r.iter_lines() if line]
                outcomes.append("finished" if lines and lines[-1] == b"data: [DONE]" else "error")
        except requests.RequestException:
            outcomes.append("error")

    greenlets = [gevent.spawn(stream, i) for i in range(streams)]
    gevent.sleep(1.0)  # the streams are admitted and under way
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    gevent.joinall(greenlets, timeout=10)
    hung = sum(1 for g in greenlets if not g.dead)
    counts = collections.Counter(outcomes)
    return {"exit_code": code, "seconds": time.perf_counter() - t0, "in_flight": streams,
            "finished": counts["finished"], "errored": counts["error"], "hung": hung,
            "clean": code in (0, -signal.SIGTERM) and hung == 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quick", action="store_true", help="tiny-llama, 4 s per level, 20 replayed requests (< 60 s)")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="user counts, comma-separated")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds per level")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds at the largest level before the first RSS")
    ap.add_argument("--sample", type=int, default=200, help="distinct greedy requests replayed alone")
    ap.add_argument("--replay-limit", type=float, default=1200.0, help="seconds the replay may take at most")
    ap.add_argument("--adapter", action="append", default=[], help="NAME=PATH (else --s2ft/--lora random ones)")
    ap.add_argument("--s2ft", type=int, default=3)
    ap.add_argument("--lora", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--max-adapters", type=int, default=0, help="resident adapters at most (0: all)")
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = ap.parse_args()
    if args.quick:
        args.model, args.duration, args.warmup, args.sample = "tiny-llama", 4.0, 3.0, 20
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tangentft-serve-load-"))
    load_start = os.getloadavg()
    specs = args.adapter or json.loads(subprocess.run(
        [sys.executable, str(Path(__file__).with_name("serve_adapters.py")), "--model", args.model, "--out", str(work),
         "--s2ft", str(args.s2ft), "--lora", str(args.lora)], check=True, capture_output=True, text=True).stdout)
    names = [s.split("=", 1)[0] for s in specs]
    churn_path = specs[0].split("=", 1)[1]
    t0 = time.time()
    proc, url = start_server(args, specs, work / "server.log")
    base = requests.get(url + "/v1/models", headers=headers(), timeout=10).json()["data"][0]["id"]
    STATE.update(models=[base, *names, "churn"], adapters=set(names), classify=[base, *names], churn=("churn", churn_path))
    result = {"model": args.model, "adapters": names, "max_batch": args.max_batch, "max_queue": args.max_queue,
              "max_adapters": args.max_adapters or None, "seconds_per_level": args.duration, "warmup_s": args.warmup,
              "server_start_s": time.time() - t0, "levels": {}}
    try:
        run_level(url, max(levels), args.warmup, "warmup")
        gevent.sleep(2.0)
        rss_warm = rss_mb(proc.pid)
        for users in levels:
            result["levels"][str(users)] = summarize(str(users), run_level(url, users, args.duration, str(users)))
            lv = result["levels"][str(users)]
            print(f"users {users}: {lv['requests']} requests, {lv['tokens_per_s']:.1f} tok/s, 5xx {lv['5xx']}, "
                  f"429 {lv['429']}, max queue {lv['max_queue_depth']:.0f}", flush=True)
        gevent.sleep(2.0)
        rss_soak = rss_mb(proc.pid)
        result["greedy_alone"] = replay(url, args.sample, 0, args.replay_limit)
    finally:
        result["sigterm"] = sigterm(proc, url, 4, 60.0) if proc.poll() is None else {"clean": False, "exit_code": proc.returncode}
    all_levels = list(result["levels"].values())
    result["rss_mb"] = {"after_warmup": rss_warm, "after_soak": rss_soak, "growth": rss_soak / rss_warm - 1}
    result["pass"] = {
        "no_5xx": all(lv["5xx"] == 0 and lv["no_answer"] == 0 for lv in all_levels),
        "greedy_equal_alone": result["greedy_alone"]["mismatches"] == 0,
        "greedy_sample_at_least_requested": result["greedy_alone"]["checked_requests"] >= args.sample,
        "rss_within_5pct": abs(result["rss_mb"]["growth"]) <= 0.05,
        "queue_bounded": all(lv["max_queue_depth"] <= args.max_queue for lv in all_levels),
        "clean_sigterm": result["sigterm"]["clean"],
    }
    result["machine"] = (f"CPU, shared 2-core machine, server and load generator on it together, 1 torch thread; "
                         f"load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(partial, args.out)  # atomic: a reader never sees half a file
    print(json.dumps(result["pass"]), flush=True)


if __name__ == "__main__":
    main()
