"""tangentft serve, through the official ``openai`` client against a live server on a loopback port."""

from __future__ import annotations

import concurrent.futures
import json
import threading

import httpx
import openai
import pytest
import torch

from conftest import tiny_task_model
from serve_helpers import BASE, LiveServer, make_adapter

GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "s2": make_adapter(root / "s2", "s2ft", 1),
        "lo": make_adapter(root / "lo", "lora", 2),
        "s3": make_adapter(root / "s3", "s2ft", 3),
        "s4": make_adapter(root / "s4", "s2ft", 4, task=False),
        "other": make_adapter(root / "other", "s2ft", 1, base_seed=7),
        "gpt2": make_adapter(root / "gpt2", "lora", 5, name="tiny-gpt2", task=False),
    }


@pytest.fixture(scope="module")
def server(adapters):
    from tangentft.serve import build_app

    torch.set_num_threads(1)
    app, engine = build_app(BASE, [f"{n}={adapters[n]}" for n in ("s2", "lo", "s3")], batch_wait_ms=3)
    with LiveServer(app) as srv:
        srv.engine = engine
        yield srv


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _reference(adapter_dir, prompt: str, max_tokens: int) -> str:
    """Greedy generation with PEFT's own model (no server): what a request must return."""
    from peft import PeftModel

    tm = tiny_task_model(BASE)
    model = PeftModel.from_pretrained(tm.hf, str(adapter_dir)).eval() if adapter_dir else tm.hf.eval()
    ids = tm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=0)
    return tm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_models_lists_base_and_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == BASE and {"s2", "lo", "s3"} <= set(ids)


@pytest.mark.parametrize("model", ["s2", "lo", BASE])
def test_completion_equals_peft_generate(client, adapters, model):
    r = client.completions.create(model=model, prompt="good movie plot", **GREEDY)
    assert r.choices[0].text == _reference(adapters.get(model), "good movie plot", 6)
    assert r.usage.completion_tokens == 6 and r.usage.total_tokens == r.usage.prompt_tokens + 6
    assert r.choices[0].finish_reason == "length"


def test_chat_stream_stop_and_seed(client):
    chat = client.chat.completions.create(model="s3", messages=[{"role": "user", "content": "hello"}], **GREEDY)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage.completion_tokens == 6
    full = client.completions.create(model="lo", prompt="fun story", **GREEDY).choices[0].text
    chunks = list(client.completions.create(model="lo", prompt="fun story", stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert chunks[-1].usage.completion_tokens == 6
    streamed_chat = client.chat.completions.create(model="s3", messages=[{"role": "user", "content": "hello"}],
                                                   stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in streamed_chat) == chat.choices[0].message.content
    stop = full.strip().split()[1]
    cut = client.completions.create(model="lo", prompt="fun story", stop=[stop], **GREEDY)
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == full[: full.index(stop)]
    a, b = (client.completions.create(model="s2", prompt="dull", temperature=1.0, top_p=0.9, seed=11, max_tokens=8)
            for _ in range(2))
    assert a.choices[0].text == b.choices[0].text


def test_classify_equals_task_model(server, adapters):
    from peft import PeftModel

    from tangentft.data.types import Example

    texts = ["good movie", "boring and dull plot"]
    r = httpx.post(server.url + "/v1/classify", json={"model": "s2", "input": texts}, timeout=60).json()
    tm = tiny_task_model(BASE)
    pm = PeftModel.from_pretrained(tm.hf, str(adapters["s2"])).eval()
    object.__setattr__(tm, "peft_model", pm)
    with torch.no_grad():
        expected = tm(**tm.encode([Example(t, 0) for t in texts]))
    got = torch.tensor([d["scores"] for d in r["data"]])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert r["labels"] == ["negative", "positive"]
    assert [d["label"] for d in r["data"]] == [r["labels"][int(i)] for i in expected.argmax(1)]
    bad = httpx.post(server.url + "/v1/classify", json={"model": BASE, "input": ["x"]}, timeout=60)
    assert bad.status_code == 400 and "task" in bad.json()["error"]["message"]
    ok = httpx.post(server.url + "/v1/classify", json={"model": BASE, "input": ["x"], "task": "sst2"}, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["data"]) == 1


def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    for bad in ({"max_tokens": 0}, {"max_tokens": 10**6}, {"n": 2}, {"temperature": -1}):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="s2", prompt="x", **{"max_tokens": 2, **bad})
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="s2", prompt="good " * 400, max_tokens=2)
    h = {"content-type": "application/json"}
    for body in (b"{not json", b"[]", json.dumps({"prompt": "x"}).encode(), json.dumps({"model": "s2"}).encode()):
        r = httpx.post(server.url + "/v1/completions", content=body, headers=h, timeout=30)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    r = httpx.get(server.url + "/v1/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    # a client that disconnects mid-stream: its row leaves the batch, the next request is served
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"model": "s2", "prompt": "x", "max_tokens": 200, "stream": True, "temperature": 0}) as s:
        next(s.iter_lines())
    assert client.completions.create(model="s2", prompt="x", max_tokens=2).usage.completion_tokens == 2
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'tangentft_requests_total{endpoint="completions",model="s2",status="200"}' in metrics
    assert "tangentft_batch_rows_count" in metrics and "tangentft_tokens_per_second" in metrics
    assert 'tangentft_request_tokens_per_second{model="s2"}' in metrics


def test_load_unload_while_serving_and_wrong_base(server, client, adapters):
    expected = client.completions.create(model="s2", prompt="great actor", **GREEDY).choices[0].text
    errors, done = [], threading.Event()

    def background():
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        while not done.is_set():
            try:
                text = c.completions.create(model="s2", prompt="great actor", **GREEDY).choices[0].text
                if text != expected:
                    errors.append(text)
            except Exception as exc:  # noqa: BLE001 — any failure of a concurrent request is the finding
                errors.append(repr(exc))

    t = threading.Thread(target=background)
    t.start()
    try:
        r = httpx.post(server.url + "/v1/adapters", json={"name": "s4", "path": str(adapters["s4"])}, timeout=60)
        assert r.status_code == 200 and r.json()["kind"] == "s2ft", r.text
        got = client.completions.create(model="s4", prompt="great actor", **GREEDY).choices[0].text
        assert got == _reference(adapters["s4"], "great actor", 6)
        for name in ("other", "gpt2"):
            r = httpx.post(server.url + "/v1/adapters", json={"name": name, "path": str(adapters[name])}, timeout=60)
            assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_conflict", r.text
        r = httpx.post(server.url + "/v1/adapters", json={"name": "s2", "path": str(adapters["s4"])}, timeout=60)
        assert r.status_code == 409
        r = httpx.post(server.url + "/v1/adapters", json={"name": "x", "path": "/no/such/folder"}, timeout=60)
        assert r.status_code == 400
        assert httpx.delete(server.url + "/v1/adapters/s4", timeout=60).status_code == 200
        assert httpx.delete(server.url + "/v1/adapters/s4", timeout=60).status_code == 404
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="s4", prompt="x", max_tokens=2)
    finally:
        done.set()
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert {m.id for m in client.models.list().data} == {BASE, "s2", "lo", "s3"}
    assert client.completions.create(model="s2", prompt="great actor", **GREEDY).choices[0].text == expected


@pytest.mark.slow
def test_load_8_clients_10_requests_each_equals_alone(server, client):
    """8 concurrent clients × 10 greedy requests over 3 adapters and the base: each answer equals the same
    request served alone, and nothing errors."""
    models = ["s2", "lo", "s3", BASE]
    words = "good bad movie plot actor boring fun dull superb story".split()
    requests = [(models[(c + i) % 4], " ".join(words[(c * 3 + i) % 10 : (c * 3 + i) % 10 + 1 + i % 4]), 3 + (c + i) % 5)
                for c in range(8) for i in range(10)]
    alone = {}
    for req in dict.fromkeys(requests):
        model, prompt, n = req
        alone[req] = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=n).choices[0].text

    def worker(c):
        cl = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)
        out = []
        for model, prompt, n in requests[c * 10 : (c + 1) * 10]:
            out.append(cl.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=n).choices[0].text)
        return out

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [t for r in pool.map(worker, range(8)) for t in r]
    assert results == [alone[r] for r in requests]
    metrics = httpx.get(server.url + "/metrics").text
    buckets = {line.split('le="')[1].split('"')[0]: int(line.split()[-1])
               for line in metrics.splitlines() if line.startswith("tangentft_batch_rows_bucket")}
    assert buckets["+Inf"] > buckets["1"], "concurrent requests were never batched together"


def test_queue_full_is_429_and_api_key(adapters):
    from tangentft.serve import build_app

    app, engine = build_app(BASE, [f"s2={adapters['s2']}"], api_key="sekret", max_queue=1, max_batch=1)
    with LiveServer(app) as srv:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(srv.url + "/health").status_code == 200
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0, timeout=60)
        gate = threading.Event()
        app.state.scheduler.call(gate.wait)  # hold the worker so the next request waits in the queue
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.completions.create, model="s2", prompt="x", max_tokens=2)
            while app.state.scheduler.queue_depth < 1:
                threading.Event().wait(0.01)
            with pytest.raises(openai.RateLimitError):
                c.completions.create(model="s2", prompt="y", max_tokens=2)
            auth = {"authorization": "Bearer sekret"}
            classify = pool.submit(httpx.post, srv.url + "/v1/classify", json={"model": "s2", "input": "x"}, headers=auth,
                                   timeout=60)
            while len(app.state.scheduler._calls) < 1:  # calls (classify, adapter loads) wait in a bounded queue too
                threading.Event().wait(0.01)
            r = httpx.post(srv.url + "/v1/classify", json={"model": "s2", "input": "y"}, headers=auth, timeout=60)
            assert r.status_code == 429, r.text
            gate.set()
            assert first.result().usage.completion_tokens == 2
            assert classify.result().status_code == 200
        assert c.completions.create(model="s2", prompt="y", max_tokens=2).usage.completion_tokens == 2


def test_cli_bad_adapter_spec_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from tangentft.cli.main import app

    res = CliRunner().invoke(app, ["serve", "--model", BASE, "--adapter", "no-equals-sign"])
    assert res.exit_code == 2 and "NAME=PATH" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["serve", "--model", BASE, "--adapter", f"a={tmp_path / 'missing'}"])
    assert res.exit_code == 2 and "no such folder" in res.output


def test_first_lora_of_other_shapes_is_refused_and_leaves_nothing(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tangentft.models.registry import load_model
    from tangentft.models.tiny import tiny_config
    from tangentft.serve import AdapterConflict, Engine

    cfg = tiny_config(BASE, 30522)
    cfg.intermediate_size = 64  # same module names, other shapes
    get_peft_model(AutoModelForCausalLM.from_config(cfg), LoraConfig(r=2, target_modules=["down_proj"])).save_pretrained(
        str(tmp_path / "bad"))
    engine = Engine(load_model(BASE))
    x = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        before = engine.hf(input_ids=x).logits
        with pytest.raises(AdapterConflict, match="does not fit"):
            engine.load("bad", tmp_path / "bad")
        assert engine.host.peft is None and not engine.adapters
        assert type(engine.hf.model.layers[0].mlp.down_proj).__name__ == "Linear"
        assert torch.equal(engine.hf(input_ids=x).logits, before)
