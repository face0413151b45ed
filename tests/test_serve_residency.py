"""--max-adapters: at most N adapters resident, the others read from disk on demand (LRU); an evicted adapter
answers exactly as before; /metrics reports residency, loads, evictions and per-model requests."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest
import torch

from serve_helpers import BASE, LiveServer, make_adapter

GREEDY = {"temperature": 0, "max_tokens": 4}
PROMPTS = ["good movie", "dull plot twist"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"s1": make_adapter(root / "s1", "s2ft", 1), "lo": make_adapter(root / "lo", "lora", 2),
            "s3": make_adapter(root / "s3", "s2ft", 3), "l4": make_adapter(root / "l4", "lora", 4, task=False)}


def metric(text: str, name: str) -> int:
    return next((int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(name + " ")), 0)


def test_evicted_adapters_reload_and_answer_identically(folders):
    from tangentft.serve import build_app

    torch.set_num_threads(1)
    names = list(folders)
    app, engine = build_app(BASE, [f"{n}={folders[n]}" for n in names], batch_wait_ms=1)
    with LiveServer(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        # reference answers with every adapter resident as loaded, then at most 2 resident from here on
        alone = {(n, p): c.completions.create(model=n, prompt=p, **GREEDY).choices[0].text for n in names for p in PROMPTS}
        scores = httpx.post(srv.url + "/v1/classify", json={"model": "s1", "input": PROMPTS}, timeout=60).json()
        engine.max_resident = 2
        r = httpx.post(srv.url + "/v1/adapters", json={"name": "s5", "path": str(folders["s1"])}, timeout=60)
        assert r.status_code == 200 and list(engine.resident) == ["s1", "s5"], (r.text, engine.resident)
        assert httpx.delete(srv.url + "/v1/adapters/s5", timeout=30).status_code == 200
        assert {m.id for m in c.models.list().data} == {BASE, *names}
        for n in ["lo", "s3", "l4", "s1"]:  # with 2 resident, each of these reads its adapter again
            loads = engine.loads[n]
            for p in PROMPTS:
                assert c.completions.create(model=n, prompt=p, **GREEDY).choices[0].text == alone[(n, p)], (n, p)
            assert engine.loads[n] == loads + 1 and len(engine.resident) <= 2
        again = httpx.post(srv.url + "/v1/classify", json={"model": "s1", "input": PROMPTS}, timeout=60).json()
        assert again["data"] == scores["data"]
        # concurrent requests over 4 adapters and the base with 2 resident: rows wait for a slot, none fails
        jobs = [(n, p) for n in [*names, BASE] for p in PROMPTS]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda j: c.completions.create(model=j[0], prompt=j[1], **GREEDY).choices[0].text, jobs))
        assert got[: len(names) * len(PROMPTS)] == [alone[j] for j in jobs[: len(names) * len(PROMPTS)]]
        listed = httpx.get(srv.url + "/v1/adapters").json()["data"]
        assert sum(a["resident"] for a in listed) == len(engine.resident) <= 2
        text = httpx.get(srv.url + "/metrics").text
        assert metric(text, "tangentft_adapters_registered") == 4 and metric(text, "tangentft_adapters_max_resident") == 2
        for n in names:
            assert metric(text, f'tangentft_adapter_loads_total{{adapter="{n}"}}') >= 2
            assert metric(text, f'tangentft_adapter_evictions_total{{adapter="{n}"}}') >= 1
        assert metric(text, 'tangentft_model_requests_total{model="lo"}') == 3 * len(PROMPTS)
        assert metric(text, f'tangentft_model_requests_total{{model="{BASE}"}}') == len(PROMPTS)
        # an adapter that is not resident unloads from the registry alone
        evicted = next(n for n in names if n not in engine.resident)
        assert httpx.delete(srv.url + f"/v1/adapters/{evicted}", timeout=30).status_code == 200
        assert evicted not in engine.adapters


def test_max_resident_must_be_positive(folders):
    from typer.testing import CliRunner

    from tangentft.cli.main import app

    res = CliRunner().invoke(app, ["serve", "--model", BASE, "--max-adapters", "0", "--adapter", f"a={folders['s1']}"])
    assert res.exit_code == 2 and "at least 1" in res.output and "Traceback" not in res.output
