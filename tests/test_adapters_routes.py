"""Kiln's adapter routes (`/v1/adapters/*`) and `POST /v1/completions/batch` on the real
SmolLM2, over HTTP to the app (in-process, with API keys and a data directory of its own
that shares only the converted model). The adapters are random PEFT LoRAs."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from gateway_torch.lora.synthetic import write_random_adapter
from litestar.testing import TestClient
from safetensors.torch import load_file, save_file

from gateway.adapters.store import AdapterStore
from gateway.app import create_app
from gateway.gateway import Gateway
from gateway.routes.adapters import upload
from gateway.settings import DEFAULT_CHAT_MODEL, ApiKey, Settings

MODEL = DEFAULT_CHAT_MODEL.name
ADMIN = "admin-key-123456"
INFERENCE = "inference-key-123"
ADAPTERS = "adapters-key-1234"
KEYS = [
    ApiKey(key=ADMIN, name="ops", scopes=["admin"]),
    ApiKey(key=INFERENCE, name="app", scopes=["inference"]),
    ApiKey(key=ADAPTERS, name="tuner", scopes=["adapters"]),
]
TOKENS = 8
QUESTION = "Name a warm color."
RANDOM = {"lora-a": 1, "lora-b": 2}
"""The module's adapters and their seeds (rank 8 on every linear layer)."""


class Served(NamedTuple):
    gateway: Gateway
    client: TestClient


@pytest.fixture(scope="module")
def served(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The gateway serving SmolLM2 with keys, in a data directory of its own, and a client."""
    folder = tmp_path_factory.mktemp("adapters")
    (folder / "models").symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    gateway = Gateway(Settings(data_dir=str(folder), models=[DEFAULT_CHAT_MODEL], api_keys=KEYS))
    with TestClient(create_app(gateway=gateway), timeout=300) as client:
        deadline = time.monotonic() + 300
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health").text
            time.sleep(0.2)
        yield Served(gateway, client)


@pytest.fixture(scope="module")
def store(served: Served) -> AdapterStore:
    """The model's store, with the random adapters of RANDOM installed."""
    backend = served.gateway.models.get(MODEL)
    for name, seed in RANDOM.items():
        staging = backend.adapters.staging()
        shutil.rmtree(staging)
        write_random_adapter(backend._lm.model, staging, seed=seed)  # type: ignore[attr-defined]
        backend.adapters.install(staging, name)
    return backend.adapters


@pytest.fixture
def api(served: Served, store: AdapterStore) -> Iterator[TestClient]:
    """An admin client; the server default is the base model before and after each test."""
    client = served.client
    client.headers["Authorization"] = f"Bearer {ADMIN}"
    assert client.post("/v1/adapters/unload").status_code == 200
    yield client
    client.headers["Authorization"] = f"Bearer {ADMIN}"
    assert client.post("/v1/adapters/unload").status_code == 200


def chat(api: TestClient, **extra: Any) -> tuple[str, str, Any]:
    """Greedy answer to QUESTION: (text, X-Gateway-Adapters, body `adapters`)."""
    body = {
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": TOKENS,
        "temperature": 0,
        **extra,
    }
    response = api.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    text = payload["choices"][0]["message"]["content"]
    return text, response.headers["x-gateway-adapters"], payload.get("adapters")


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The family's error envelope, checked: Kiln's code and message, OpenAI's type and param."""
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    assert {"message", "type", "param"} <= set(body)
    return body


def targz(files: dict[str, bytes]) -> bytes:
    """A tar.gz holding `files` (archive name -> contents) as written, unchecked."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def folder_files(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{p.name}": p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def send_upload(api: TestClient, archive: bytes, name: str | None, **fields: str) -> Any:
    data = {**({"name": name} if name is not None else {}), **fields}
    files = {"archive": ("adapter.tar.gz", archive, "application/gzip")}
    return api.post("/v1/adapters/upload", data=data, files=files)


def left_behind(store: AdapterStore) -> list[str]:
    """Everything in the store's folder besides the adapters and the default."""
    names = set(store.names()) | {".default.json"}
    return sorted(p.name for p in store.root.iterdir() if p.name not in names)


# Listing, load and unload.


def test_list_shows_every_adapter_and_the_default(api):
    body = api.get("/v1/adapters").json()
    assert body["active"] is None and body["default"] == [] and body["model"] == MODEL
    entries = {entry["name"]: entry for entry in body["available"]}
    assert set(RANDOM) <= set(entries)
    entry = entries["lora-a"]
    assert entry["has_config"] and entry["has_weights"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(entry["files"])
    assert entry["size_bytes"] > 1_000_000 and entry["modified_at"].endswith("Z")
    error(api.get("/v1/adapters", params={"model": "nope"}), 404, "model_not_found")


def test_load_sets_the_default_that_requests_without_adapter_get(api):
    base, header, _ = chat(api)
    assert header == "none"
    loaded = api.post("/v1/adapters/load", json={"name": "lora-a"})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {
        "status": "loaded",
        "name": "lora-a",
        "adapters": [{"name": "lora-a", "scale": 1.0}],
        "model": MODEL,
    }
    listed = api.get("/v1/adapters").json()
    assert listed["active"] == "lora-a"
    assert listed["default"] == [{"name": "lora-a", "scale": 1.0}]
    tuned, header, adapters = chat(api)
    assert header == "lora-a@1" and adapters == [{"name": "lora-a", "scale": 1.0}]
    assert tuned != base
    assert chat(api, adapter="lora-a")[0] == tuned
    text, header, adapters = chat(api, adapter=None)
    assert (text, header, adapters) == (base, "none", [])

    unloaded = api.post("/v1/adapters/unload", json={"model": MODEL})
    assert unloaded.json() == {"status": "unloaded", "model": MODEL}
    assert api.get("/v1/adapters").json()["active"] is None
    assert chat(api)[:2] == (base, "none")


def test_load_a_composition(api):
    composed = [{"name": "lora-a", "scale": 0.5}, {"name": "lora-b", "scale": 0.5}]
    loaded = api.post("/v1/adapters/load", json={"adapters": composed})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["name"] == "lora-a+lora-b"
    listed = api.get("/v1/adapters").json()
    assert listed["active"] == "lora-a+lora-b" and listed["default"] == composed
    assert chat(api)[1] == "lora-a@0.5,lora-b@0.5"
    assert chat(api)[0] == chat(api, adapters=composed)[0]


def test_load_refusals(api, store):
    error(api.post("/v1/adapters/load", json={"name": "missing"}), 404, "adapter_not_found")
    error(api.post("/v1/adapters/load", json={"name": "../x"}), 400, "invalid_adapter_name")
    both = {"name": "lora-a", "adapters": [{"name": "lora-b"}]}
    error(api.post("/v1/adapters/load", json=both), 400, "invalid_compose_request")
    error(api.post("/v1/adapters/load", json={"adapters": []}), 400, "invalid_compose_request")
    error(api.post("/v1/adapters/load", json={}), 400, "invalid_request")
    # An adapter put into the store behind the API's back that does not fit the model.
    staging = store.staging()
    for source in store.path("lora-a").iterdir():
        shutil.copy(source, staging / source.name)
    _reshape_one_tensor(staging / "adapter_model.safetensors")
    store.install(staging, "misfit")
    try:
        body = error(
            api.post("/v1/adapters/load", json={"name": "misfit"}), 400, "adapter_mismatch"
        )
        assert "576" in body["message"]
        assert api.get("/v1/adapters").json()["active"] is None
    finally:
        store.delete("misfit")


# Delete.


def test_delete_refuses_the_default_then_removes_the_adapter_and_its_checkpoints(api, store):
    for name in ("doomed", "doomed-checkpoint-10"):
        staging = store.staging()
        for source in store.path("lora-b").iterdir():
            shutil.copy(source, staging / source.name)
        store.install(staging, name)
    assert api.post("/v1/adapters/load", json={"name": "doomed"}).status_code == 200
    error(api.delete("/v1/adapters/doomed"), 409, "adapter_active")
    assert "doomed" in store.names()
    api.post("/v1/adapters/unload")
    deleted = api.delete("/v1/adapters/doomed")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"status": "deleted", "name": "doomed"}
    names = [entry["name"] for entry in api.get("/v1/adapters").json()["available"]]
    assert "doomed" not in names and "doomed-checkpoint-10" not in names
    error(api.delete("/v1/adapters/doomed"), 404, "adapter_not_found")
    error(api.delete("/v1/adapters/.hidden"), 400, "invalid_adapter_name")


# Download and upload.


def test_download_then_upload_under_a_new_name_round_trips(api, store):
    response = api.get("/v1/adapters/lora-a/download")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == 'attachment; filename="lora-a.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        members = tar.getnames()
    assert "lora-a/adapter_model.safetensors" in members
    assert all(m == "lora-a" or m.startswith("lora-a/") for m in members)

    uploaded = send_upload(api, response.content, "lora-a-copy")
    assert uploaded.status_code == 200, uploaded.text
    original = folder_files(store.path("lora-a"), "x")
    try:
        assert uploaded.json() == {
            "name": "lora-a-copy",
            "size_bytes": sum(len(data) for data in original.values()),
            "files": len(original),
        }
        assert folder_files(store.path("lora-a-copy"), "x") == original
        assert chat(api, adapter="lora-a-copy")[0] == chat(api, adapter="lora-a")[0]
        error(send_upload(api, response.content, "lora-a-copy"), 409, "adapter_already_exists")
    finally:
        store.delete("lora-a-copy")
    error(api.get("/v1/adapters/missing/download"), 404, "adapter_not_found")
    assert left_behind(store) == []


def _reshape_one_tensor(weights: Path) -> None:
    """Make the adapter one for a model with another hidden size (one lora_A narrower)."""
    tensors = load_file(str(weights))
    key = next(k for k in sorted(tensors) if "q_proj.lora_A" in k)
    tensors[key] = tensors[key][:, :512].contiguous()
    save_file(tensors, str(weights), metadata={"format": "pt"})


def _other_architecture(store: AdapterStore, tmp_path: Path) -> bytes:
    folder = tmp_path / "misfit"
    shutil.copytree(store.path("lora-a"), folder)
    _reshape_one_tensor(folder / "adapter_model.safetensors")
    return targz(folder_files(folder, "misfit"))


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("escaping path", "adapter_import_invalid"),
        ("not an adapter", "adapter_import_invalid"),
        ("not an archive", "adapter_import_invalid"),
        ("other architecture", "adapter_mismatch"),
    ],
)
def test_upload_refuses_a_bad_archive_and_leaves_nothing(api, store, tmp_path, case, code):
    archives = {
        "escaping path": lambda: targz({"evil/../../outside.txt": b"x", "evil/a.txt": b"y"}),
        "not an adapter": lambda: targz({"notes/README.md": b"# hello\n"}),
        "not an archive": lambda: b"just some bytes, not gzip, not tar" * 100,
        "other architecture": lambda: _other_architecture(store, tmp_path),
    }
    before = store.names()
    error(send_upload(api, archives[case](), "refused"), 400, code)
    assert store.names() == before
    assert left_behind(store) == []
    assert not (store.root.parent / "outside.txt").exists()


def test_upload_refuses_bad_forms(api, store, monkeypatch):
    archive = api.get("/v1/adapters/lora-b/download").content
    error(send_upload(api, archive, "lora-a"), 409, "adapter_already_exists")
    for name in ("../x", "a/b", ".hidden", ""):
        body = error(send_upload(api, archive, name), 400, "invalid_adapter_name")
        assert body["param"] == "name"
    body = error(send_upload(api, archive, None), 400, "adapter_import_invalid")
    assert body["param"] == "name"
    no_archive = api.post("/v1/adapters/upload", files={"name": (None, "x")})
    error(no_archive, 400, "adapter_import_invalid")
    error(api.post("/v1/adapters/upload", json={"name": "x"}), 400, "adapter_import_invalid")
    error(send_upload(api, archive, "new", model="nope"), 404, "model_not_found")
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", len(archive) - 1)
    error(send_upload(api, archive, "too-big"), 413, "request_too_large")
    assert "too-big" not in store.names()
    assert left_behind(store) == []


def test_an_upload_of_unknown_length_is_cut_off_at_the_limit(api, store, monkeypatch):
    """A chunked body (no Content-Length) is counted as it arrives."""
    archive = api.get("/v1/adapters/lora-b/download").content
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", len(archive) // 2)
    boundary = "kiln-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nstreamed\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; filename="a.tar.gz"'
        "\r\nContent-Type: application/gzip\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for start in range(0, len(archive), 65536):
            yield archive[start : start + 65536]
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = api.post("/v1/adapters/upload", content=body(), headers=headers)
    assert "content-length" not in response.request.headers
    error(response, 413, "request_too_large")
    assert "streamed" not in store.names() and left_behind(store) == []
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", len(archive))
    response = api.post("/v1/adapters/upload", content=body(), headers=headers)
    assert response.status_code == 200, response.text
    store.delete("streamed")


# Merge.


@pytest.mark.parametrize("mode", ["weighted_average", "ties", "concat"])
def test_merge_each_mode_makes_an_adapter_that_serves(api, store, mode):
    sources = [{"name": "lora-a", "weight": 0.7}, {"name": "lora-b", "weight": 0.3}]
    output = f"merged-{mode.replace('_', '-')}"
    response = api.post(
        "/v1/adapters/merge", json={"output_name": output, "mode": mode, "sources": sources}
    )
    assert response.status_code == 200, response.text
    try:
        body = response.json()
        assert body["status"] == "merged" and body["output_name"] == output
        assert body["mode"] == mode and body["sources"] == sources
        assert body["num_tensors"] == 30 * 7 * 2  # A and B of 7 projections in 30 layers
        config = json.loads((store.path(output) / "adapter_config.json").read_text())
        assert config["r"] == (16 if mode == "concat" else 8)
        text, header, _ = chat(api, adapter=output)
        assert header == f"{output}@1" and text
    finally:
        store.delete(output)


def test_merge_refusals(api):
    def merge(**body: Any) -> Any:
        body.setdefault("sources", [{"name": "lora-a", "weight": 1.0}])
        body.setdefault("output_name", "merged")
        return api.post("/v1/adapters/merge", json=body)

    error(merge(density=0.5), 400, "adapter_merge_invalid")
    error(merge(mode="ties", density=1.5), 400, "adapter_merge_invalid")
    error(merge(mode="sum"), 400, "adapter_merge_invalid")
    error(merge(sources=[]), 400, "adapter_merge_invalid")
    error(merge(output_name="../x"), 400, "adapter_merge_bad_name")
    error(merge(sources=[{"name": "a/b"}]), 400, "invalid_adapter_name")
    error(merge(sources=[{"name": "missing"}]), 404, "adapter_not_found")
    error(merge(output_name="lora-b"), 409, "adapter_merge_output_exists")


# Batch.


def test_batch_completes_every_prompt_n_times_reproducibly(api):
    body = {
        "prompts": ["Name a warm color.", [{"role": "user", "content": "Name a cool color."}]],
        "n": 2,
        "max_tokens": TOKENS,
        "seed": 7,
    }
    first = api.post("/v1/completions/batch", json=body)
    assert first.status_code == 200, first.text
    payload = first.json()
    assert payload["object"] == "batch.completion" and payload["id"].startswith("batchcmpl-")
    assert payload["model"] == MODEL and isinstance(payload["created"], int)
    completions = payload["completions"]
    assert [(c["prompt_index"], c["completion_index"]) for c in completions] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    for item in completions:
        assert item["text"] and item["finish_reason"] in {"stop", "length"}
        usage = item["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    usage = payload["usage"]
    assert usage["completion_tokens"] == sum(c["usage"]["completion_tokens"] for c in completions)
    assert usage["prompt_tokens"] == sum(c["usage"]["prompt_tokens"] for c in completions[::2])
    again = api.post("/v1/completions/batch", json=body).json()["completions"]
    assert [c["text"] for c in again] == [c["text"] for c in completions]
    # Output j of prompt i is sampled with seed 7 + i*n + j: the last one with seed 10.
    alone = chat(api, messages=body["prompts"][1], temperature=1.0, seed=10)[0]
    assert alone == completions[3]["text"]
    assert first.headers["x-gateway-adapters"] == "none"


def test_batch_with_an_adapter_and_refusals(api):
    body = {"prompts": [QUESTION], "max_tokens": TOKENS, "temperature": 0, "adapter": "lora-a"}
    response = api.post("/v1/completions/batch", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-adapters"] == "lora-a@1"
    assert response.json()["completions"][0]["text"] == chat(api, adapter="lora-a")[0]

    def batch(**fields: Any) -> Any:
        return api.post("/v1/completions/batch", json={"prompts": ["hi"], **fields})

    error(batch(prompts=["hi"] * 33, n=2), 400, "batch_too_large")
    error(batch(n=65), 400, "batch_too_large")
    error(batch(prompts=[]), 400, "batch_invalid_request")
    error(batch(n=0), 400, "batch_invalid_request")
    error(batch(adapter="lora-a", adapters=[{"name": "lora-b"}]), 400, "invalid_compose_request")
    error(batch(adapter="missing"), 404, "adapter_not_found")


# Scopes.


def test_scopes(api):
    def call(key: str | None, method: str, path: str, **kwargs: Any) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        api.headers.pop("Authorization", None)
        return api.request(method, path, headers=headers, **kwargs).status_code

    archive = api.get("/v1/adapters/lora-a/download").content
    mutating = [
        ("POST", "/v1/adapters/load", {"json": {"name": "lora-a"}}),
        ("POST", "/v1/adapters/unload", {}),
        ("DELETE", "/v1/adapters/lora-a", {}),
        ("POST", "/v1/adapters/upload", {"files": {"archive": ("a.tar.gz", archive)}}),
        ("POST", "/v1/adapters/merge", {"json": {"sources": [], "output_name": "m"}}),
    ]
    for method, path, kwargs in mutating:
        assert call(INFERENCE, method, path, **kwargs) == 403, path
        assert call(None, method, path, **kwargs) == 401, path
    assert call(INFERENCE, "GET", "/v1/adapters") == 200
    assert call(INFERENCE, "GET", "/v1/adapters/lora-a/download") == 200
    batch = {"prompts": ["hi"], "max_tokens": 2}
    assert call(INFERENCE, "POST", "/v1/completions/batch", json=batch) == 200
    assert call(ADAPTERS, "POST", "/v1/adapters/load", json={"name": "lora-b"}) == 200
    assert call(ADAPTERS, "POST", "/v1/adapters/unload") == 200
    assert call(ADAPTERS, "GET", "/v1/adapters") == 403


def test_the_family_can_be_switched_off(make_client):
    client = make_client(routes={"adapters": False})
    assert client.get("/v1/adapters").status_code == 404
    assert client.post("/v1/completions/batch", json={"prompts": ["x"]}).status_code == 404
