"""/metrics on the real default model: llama-server's metric names, read from the engine
at each scrape, move as requests run."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(scope="module")
def api(live_server):
    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        yield client


def scrape(api: httpx.Client) -> dict[str, dict[str, float]]:
    """Each sample's value by name and `model` label (samples without one: key "")."""
    response = api.get("/metrics")
    assert response.status_code == 200
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values.setdefault(sample.name, {})[sample.labels.get("model", "")] = sample.value
    return values


def test_llama_server_metrics_move_under_load(api):
    before = scrape(api)
    results: list[dict] = []

    def complete(prompt: str, n_predict: int) -> None:
        body = {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "cache_prompt": False}
        response = api.post("/completion", json=body)
        assert response.status_code == 200, response.text
        results.append(response.json())

    threads = [
        threading.Thread(target=complete, args=(f"Count to ten, take {k}:", 48)) for k in range(3)
    ]
    for thread in threads:
        thread.start()
    busy = 0.0
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        busy = max(busy, *scrape(api).get("llamacpp:requests_processing", {"": 0.0}).values())
        time.sleep(0.02)
    for thread in threads:
        thread.join()
    after = scrape(api)

    model = next(iter(after["llamacpp:tokens_predicted_total"]))
    assert busy >= 1  # seen while the requests ran

    def grew(name: str) -> float:
        return after[name][model] - before.get(name, {}).get(model, 0.0)

    predicted = sum(r["timings"]["predicted_n"] for r in results)
    prompted = sum(r["timings"]["prompt_n"] for r in results)
    assert predicted == 3 * 48
    assert grew("llamacpp:tokens_predicted_total") == predicted
    assert grew("llamacpp:prompt_tokens_total") == prompted
    assert grew("llamacpp:prompt_seconds_total") > 0
    assert grew("llamacpp:tokens_predicted_seconds_total") > 0
    # One forward pass per generated token at most: the three shared their passes.
    assert 48 <= grew("llamacpp:n_decode_total") < predicted + prompted
    assert after["llamacpp:n_busy_slots_per_decode"][model] > 1.0
    assert after["llamacpp:predicted_tokens_seconds"][model] > 0
    assert after["llamacpp:n_tokens_max"][model] >= max(
        r["timings"]["prompt_n"] + 48 for r in results
    )
    assert after["llamacpp:requests_processing"][model] == 0
    assert after["llamacpp:requests_deferred"][model] == 0
    assert after["gateway_kv_cache_tokens"][model] > 0
    assert 0 < after["gateway_kv_cache_usage_ratio"][model] <= 1
    # the gateway's own timings of the same generations
    assert grew("gateway_time_to_first_token_seconds_count") == 3
    assert grew("gateway_inter_token_seconds_count") == 3 * 47
    assert grew("gateway_inter_token_seconds_sum") > 0
    decode = api.get("/v1/stats/decode").json()
    assert decode["sample_count"] >= 3 * 47 and decode["tok_per_sec"] > 0
    assert 0 < decode["p50_itl_ms"] <= decode["p99_itl_ms"]
    recent = api.get("/v1/stats/recent-requests").json()
    prompts = {entry["prompt_preview"] for entry in recent[:3]}
    assert prompts == {f"Count to ten, take {k}:" for k in range(3)}
    assert all(e["completion_tokens"] == 48 and e["finish_reason"] == "length" for e in recent[:3])


def test_requests_beyond_the_slots_are_deferred_while_they_wait(api):
    model, slots = next(iter(scrape(api)["gateway_slots"].items()))
    count = int(slots) + 4
    done: list[int] = []

    def complete(k: int) -> None:
        body = {"prompt": f"List {k} fruits:", "n_predict": 24, "ignore_eos": True}
        done.append(api.post("/completion", json=body).status_code)

    threads = [threading.Thread(target=complete, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    deferred = 0.0
    deadline = time.monotonic() + 120
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        deferred = max(deferred, scrape(api)["llamacpp:requests_deferred"][model])
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    assert done == [200] * count
    assert deferred >= 1
    assert scrape(api)["llamacpp:requests_deferred"][model] == 0
