"""Prefix affinity: the prompt's key, the rendezvous order, bounded loads, and the router's
cooldowns and retries under it (no network); then a gateway whose teacher model has two
gateways (in-process, on loopback) as its deployments."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_schemas.canonical import ChatMessage, GenerationRequest, ToolDefinition
from gateway_teacher.affinity import bounded, prefix_key, rendezvous
from gateway_teacher.failures import UpstreamProblem
from gateway_teacher.router import Cooldowns, Router
from gateway_teacher.settings import TeacherSettings
from gateway_teacher.targets import Group, Target, resolve_groups
from teacher_helpers import serve, teacher_settings

from gateway.engine import ModelSpec
from gateway.errors import ConfigError
from gateway.settings import Settings

SYSTEM = "You are a patient tutor of chemistry. " * 20  # 760 characters
QUESTIONS = [f"Question {n}: why is {thing} the way it is?" for n, thing in enumerate("abcdef")]


def chat(*contents: str) -> GenerationRequest:
    roles = ["system", "user", "assistant", "user"]
    messages = [ChatMessage(role=r, content=c) for r, c in zip(roles, contents, strict=False)]
    return GenerationRequest(id="r", model="m", messages=messages)


def target(name: str) -> Target:
    return Target("p", name, "http://x", {}, frozenset(), 1.0, "max_tokens")


def router(names: str, *, balance: float = 1.25, cooldowns: Cooldowns | None = None) -> Router:
    group = Group(names[0], tuple(target(n) for n in names))
    return Router(
        [group],
        cooldowns or Cooldowns(),
        num_retries=2,
        cooldown_seconds=5.0,
        max_fallbacks=0,
        backoff_seconds=0.0,
        balance=balance,
    )


class Calls:
    """Streams that fail with the statuses given per deployment, else yield two items."""

    def __init__(self, **failures: int):
        self.failures = failures
        self.calls: list[str] = []

    def __call__(self, target: Target) -> AsyncGenerator[str]:
        self.calls.append(target.model)
        status = self.failures.pop(target.model, None)

        async def stream() -> AsyncGenerator[str]:
            if status is not None:
                raise UpstreamProblem(target.id, "status", "no", status=status)
            yield "first"
            yield "second"

        return stream()


async def pick(route: Router, key: str) -> str:
    chosen, stream, _ = await route.open(Calls(), key)
    await stream.aclose()
    return chosen.model


# ---- the key --------------------------------------------------------------------------------


def test_the_key_is_the_start_of_the_prompt():
    length = 512
    first = prefix_key(chat(SYSTEM, QUESTIONS[0]), length)
    assert len(first) == length and first.startswith("system")
    assert prefix_key(chat(SYSTEM, QUESTIONS[1]), length) == first
    assert prefix_key(chat(SYSTEM, QUESTIONS[0], "Because.", "And?"), length) == first
    assert prefix_key(chat("Be terse. " + SYSTEM, QUESTIONS[0]), length) != first
    short = [prefix_key(chat("Be terse.", q), length) for q in QUESTIONS[:2]]
    assert short[0] != short[1]  # a short start is no shared prefix: the question decides
    text = GenerationRequest(id="r", model="m", prompt="Once upon a time " * 50)
    assert prefix_key(text, 20) == "Once upon a time Onc"
    tools = [ToolDefinition(name="weather", description="The weather of a city.")]
    with_tools = GenerationRequest(id="r", model="m", messages=[], tools=tools)
    assert prefix_key(with_tools, length).startswith('[{"name":"weather"')


def test_routing_options_are_checked():
    providers = TeacherSettings(providers={p: _provider() for p in "ab"})
    deployments = [{"provider": p, "model": "m"} for p in "ab"]
    for bad in ({"routing": "nearest"}, {"affinity_balance": 0.5}, {"affinity_prefix": 0}):
        spec = ModelSpec(name="t", backend="teacher", options={"deployments": deployments, **bad})
        with pytest.raises(ConfigError, match=next(iter(bad))):
            resolve_groups(spec, providers, {})


def _provider() -> Any:
    import msgspec
    from gateway_teacher.settings import ProviderSettings

    return msgspec.convert({"base_url": "http://127.0.0.1:9/v1"}, ProviderSettings)


# ---- the order and the router -----------------------------------------------------------------


async def test_the_same_prefix_goes_to_the_same_deployment():
    route = router("abcd")
    key = prefix_key(chat(SYSTEM, QUESTIONS[0]), 512)
    assert {await pick(route, key) for _ in range(20)} == {rendezvous(key, route.targets)[0].model}
    assert route.load == {}  # every stream counted while open, none left


async def test_distinct_prefixes_spread_over_every_deployment():
    route = router("abcd")
    counts = Counter([await pick(route, f"system prompt number {n}") for n in range(400)])
    assert set(counts) == set("abcd")
    assert all(60 <= n <= 140 for n in counts.values()), counts


def test_removing_a_deployment_moves_only_its_keys():
    every = [target(n) for n in "abcde"]
    fewer = [t for t in every if t.model != "c"]
    keys = [f"prefix {n}" for n in range(500)]
    before = {k: rendezvous(k, every)[0].model for k in keys}
    after = {k: rendezvous(k, fewer)[0].model for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "c"} and 60 <= len(moved) <= 140
    assert all(after[k] == rendezvous(k, every)[1].model for k in moved)
    assert [t.model for t in rendezvous("x", every[::-1])] == [
        t.model for t in rendezvous("x", every)
    ]  # the order of the configuration does not matter


async def test_a_cooling_or_failed_deployment_gives_way_to_the_next_in_order():
    key = "a long shared system prompt"
    route = router("abc")
    first, second, third = (t.model for t in rendezvous(key, route.targets))
    route.cooldowns.cool(f"p/{first}", 5.0)
    assert await pick(route, key) == second

    route = router("abc")
    calls = Calls(**{first: 500})
    chosen, stream, _ = await route.open(calls, key)
    await stream.aclose()
    assert calls.calls == [first, second] and chosen.model == second
    assert f"p/{first}" in route.cooldowns.remaining()  # and it cools: the key waits there
    assert await pick(route, key) == second

    route = router("abc")
    calls = Calls(**{first: 500, second: 503})
    chosen, stream, _ = await route.open(calls, key)
    await stream.aclose()
    assert calls.calls == [first, second, third]


async def test_bounded_load_diverts_a_hot_prefix():
    key = "one very popular prefix"
    for balance, expected in ((1.25, "PPQP"), (1.0, "PQPQ"), (3.0, "PPPP")):
        route = router("ab", balance=balance)
        preferred, other = (t.model for t in rendezvous(key, route.targets))
        streams = []
        for _ in range(4):  # held open: four generations in flight
            chosen, stream, _ = await route.open(Calls(), key)
            streams.append(stream)
            assert chosen.model == {"P": preferred, "Q": other}[expected[len(streams) - 1]]
        assert sum(route.load.values()) == 4
        for stream in streams:
            assert [x async for x in stream] == ["second"]
        assert route.load == {}


def test_bounded_takes_the_first_within_the_bound_else_the_least_loaded():
    a, b, c = (target(n) for n in "abc")
    load = {"p/a": 6, "p/b": 5, "p/c": 0}  # the bound: ceil(1.25 x 12 / 3) = 5
    assert bounded([a, b, c], load, [a, b, c], 1.25).model == "c"
    assert bounded([a, b], load, [a, b, c], 1.25).model == "b"  # c cooling, say: both full


# ---- live: two gateways behind a teacher model ------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    folder = tmp_path_factory.mktemp("replicas")
    echo = [ModelSpec(name="echo", backend="echo")]
    with (
        serve(Settings(data_dir=str(folder / "a"), models=echo)) as a,  # type: ignore[misc]
        serve(Settings(data_dir=str(folder / "b"), models=echo)) as b,  # type: ignore[misc]
    ):
        yield [a, b]


def served(url: str) -> int:
    health = httpx.get(f"{url}/health", timeout=10).json()
    return int(next(m["served"] for m in health["models"] if m["name"] == "echo"))


def route(url: str, replicas: list[str], model: str, *messages: tuple[str, str]) -> int:
    """Which replica answered a chat of `messages` sent to `model`."""
    before = [served(r) for r in replicas]
    body = {"model": model, "messages": [{"role": r, "content": c} for r, c in messages]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == messages[-1][1]
    [index] = [i for i, r in enumerate(replicas) if served(r) > before[i]]
    return index


def test_a_shared_prefix_stays_on_one_replica_round_robin_alternates(
    tmp_path: Path, replicas: list[str]
):
    deployments = [{"provider": p, "model": "echo"} for p in ("a", "b")]
    affinity = {"deployments": deployments, "routing": "prefix_affinity"}
    models = [
        ModelSpec(name="rr", backend="teacher", options={"deployments": deployments}),
        ModelSpec(name="affinity", backend="teacher", options=affinity),
        ModelSpec(name="persona", backend="teacher", options={**affinity, "system_prompt": SYSTEM}),
    ]
    providers = {p: {"base_url": f"{url}/v1"} for p, url in zip("ab", replicas, strict=True)}
    with serve(teacher_settings(tmp_path, providers, models)) as url:
        shared = [
            route(url, replicas, "affinity", ("system", SYSTEM), ("user", q)) for q in QUESTIONS
        ]
        assert len(set(shared)) == 1
        turns = [route(url, replicas, "rr", ("system", SYSTEM), ("user", q)) for q in QUESTIONS]
        assert turns == [0, 1] * 3
        # Distinct prompts reach both replicas, also under a system prompt of the model's
        # own (the same for all: it is left out of the key).
        for model in ("affinity", "persona"):
            spread = [route(url, replicas, model, ("user", q * 20)) for q in QUESTIONS]
            assert set(spread) == {0, 1}, (model, spread)
        health = httpx.get(f"{url}/health", timeout=10).json()
    found = {m["name"]: m for m in health["models"]}
    assert (
        found["affinity"]["routing"] == "prefix_affinity" and found["affinity"]["in_flight"] == {}
    )
    assert found["rr"]["routing"] == "round_robin" and "in_flight" not in found["rr"]
