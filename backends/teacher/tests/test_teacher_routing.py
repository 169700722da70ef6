"""Resolving models to deployments, classifying failures, and the router's retries,
fallbacks and cooldowns, without a network (calls are scripted generators)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from gateway_teacher.failures import (
    UpstreamProblem,
    UpstreamRateLimited,
    from_response,
    retry_after,
)
from gateway_teacher.router import Cooldowns, Router
from gateway_teacher.settings import TeacherSettings
from gateway_teacher.targets import Group, Target, resolve_groups

from gateway.engine import ModelSpec
from gateway.errors import (
    ConfigError,
    InvalidRequest,
    UpstreamFailure,
    UpstreamTimeout,
)
from gateway.gateway import Gateway
from gateway.settings import Settings

LOCAL = {"base_url": "http://127.0.0.1:9/v1/", "extra_params": ["top_k"]}


def settings(**providers: dict) -> TeacherSettings:
    import msgspec

    return msgspec.convert({"providers": providers}, TeacherSettings)


def test_a_model_id_names_its_provider_and_upstream_model():
    spec = ModelSpec(name="local/Qwen/Qwen2.5-7B", backend="teacher")
    [group] = resolve_groups(spec, settings(local=LOCAL), {})
    [target] = group.targets
    assert (target.provider, target.model) == ("local", "Qwen/Qwen2.5-7B")
    assert target.base_url == "http://127.0.0.1:9/v1" and target.extra_params == {"top_k"}
    assert "authorization" not in target.headers


def test_source_deployments_and_fallbacks():
    spec = ModelSpec(
        name="teacher",
        backend="teacher",
        source="local/a",
        options={
            "deployments": [
                {"provider": "local", "model": "a"},
                {"provider": "other", "model": "a"},
            ],
            "fallbacks": ["openai/gpt-4o-mini"],
        },
    )
    groups = resolve_groups(spec, settings(local=LOCAL, other=LOCAL), {"OPENAI_API_KEY": "sk-test"})
    assert [[t.id for t in g.targets] for g in groups] == [
        ["local/a", "other/a"],
        ["openai/gpt-4o-mini"],
    ]
    openai = groups[1].targets[0]
    assert openai.base_url == "https://api.openai.com/v1"
    assert openai.headers["authorization"] == "Bearer sk-test"
    [only] = resolve_groups(
        ModelSpec(name="t", backend="teacher", source="local/b"), settings(local=LOCAL), {}
    )
    assert only.targets[0].id == "local/b"


def test_configuration_errors_name_what_is_wrong():
    with pytest.raises(
        ConfigError, match=r"unknown teacher provider `nope`.*\[teacher.providers.nope\]"
    ):
        resolve_groups(ModelSpec(name="nope/x", backend="teacher"), settings(), {})
    keyed = {**LOCAL, "api_key_env": "TEACHER_TEST_KEY"}
    with pytest.raises(ConfigError, match="`TEACHER_TEST_KEY` is not set"):
        resolve_groups(ModelSpec(name="local/x", backend="teacher"), settings(local=keyed), {})
    with pytest.raises(ConfigError, match="not a teacher model id"):
        resolve_groups(ModelSpec(name="gpt-4o", backend="teacher"), settings(), {})
    bad = {**LOCAL, "extra_params": ["mirostat"]}
    with pytest.raises(ConfigError, match="extra_params: unknown field `mirostat`"):
        resolve_groups(ModelSpec(name="local/x", backend="teacher"), settings(local=bad), {})
    odd = ModelSpec(name="local/x", backend="teacher", options={"fallback": ["a/b"]})
    with pytest.raises(ConfigError, match=r"models.local/x.options.*fallback"):
        resolve_groups(odd, settings(local=LOCAL), {})


def test_the_gateway_refuses_to_start_with_a_bad_teacher(tmp_path: Path):
    model = ModelSpec(name="nope/x", backend="teacher")
    with pytest.raises(ConfigError, match="unknown teacher provider"):
        Gateway(Settings(data_dir=str(tmp_path), models=[model]))
    typo = {"teacher": {"num_retry": 3}}
    with pytest.raises(ConfigError, match=r"\[teacher\].*num_retry"):
        Gateway(Settings(data_dir=str(tmp_path), models=[], plugin_sections=typo))


def test_failures_are_classified_once():
    def status(code: int) -> UpstreamProblem:
        return UpstreamProblem("p/m", "status", "x", status=code)

    table = {
        code: (status(code).retryable, status(code).cooldown, status(code).refused)
        for code in (400, 401, 403, 404, 408, 409, 422, 429, 500, 503)
    }
    assert table == {
        400: (False, False, True),
        401: (False, True, False),
        403: (False, False, False),
        404: (False, True, False),
        408: (True, True, False),
        409: (True, False, False),
        422: (False, False, True),
        429: (True, True, False),
        500: (True, True, False),
        503: (True, True, False),
    }
    timeout = UpstreamProblem("p/m", "timeout", "slow")
    refused = UpstreamProblem("p/m", "connection", "refused")
    assert (timeout.retryable, timeout.cooldown) == (True, True)
    assert (refused.retryable, refused.cooldown) == (True, False)


def test_final_errors_carry_the_upstreams_message():
    body = b'{"error": {"message": "Bad messages", "param": "messages", "code": "bad"}}'
    refused = from_response("p/m", 400, {}, body).error()
    assert isinstance(refused, InvalidRequest) and refused.status == 400
    assert "Bad messages" in refused.message and refused.param == "messages"
    failed = from_response("p/m", 503, {}, b"<html>down</html>").error(3)
    assert isinstance(failed, UpstreamFailure) and failed.status == 502
    assert "answered 503: <html>down</html> (3 attempts)" in failed.message
    limited = from_response("p/m", 429, {"retry-after": "2"}, b'{"detail": "slow down"}')
    assert limited.retry_after == 2.0
    assert isinstance(limited.error(), UpstreamRateLimited) and limited.error().status == 429
    late = UpstreamProblem("p/m", "timeout", "no answer within 1 s").error()
    assert isinstance(late, UpstreamTimeout) and late.status == 504


def test_retry_after_forms():
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


# ---- the router ---------------------------------------------------------------------------


def target(name: str) -> Target:
    return Target(
        provider="p",
        model=name,
        base_url="http://x",
        headers={},
        extra_params=frozenset(),
        timeout=1.0,
        max_tokens_field="max_tokens",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Script:
    """Each deployment's outcomes in order: a status that fails, or "ok"."""

    def __init__(self, **outcomes: list[object]):
        self.outcomes = outcomes
        self.calls: list[str] = []
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def call(self, target: Target) -> AsyncGenerator[str]:
        self.calls.append(target.model)
        queue = self.outcomes.get(target.model, [])
        outcome = queue.pop(0) if queue else "ok"

        async def stream() -> AsyncGenerator[str]:
            if outcome == "timeout":
                raise UpstreamProblem(target.id, "timeout", "slow")
            if isinstance(outcome, tuple):
                code, wait = outcome
                raise UpstreamProblem(target.id, "status", "no", status=code, retry_after=wait)
            if isinstance(outcome, int):
                raise UpstreamProblem(target.id, "status", f"err {outcome}", status=outcome)
            yield f"{target.model}:first"
            yield f"{target.model}:second"

        return stream()


def router(script: Script, *groups: list[str], clock: Clock | None = None, **kw: object) -> Router:
    options: dict = {
        "num_retries": 2,
        "cooldown_seconds": 5.0,
        "max_fallbacks": 5,
        "backoff_seconds": 0.5,
        **kw,
    }
    return Router(
        [Group(g[0], tuple(target(n) for n in g)) for g in groups],
        Cooldowns(clock or Clock()),
        sleep=script.sleep,
        **options,
    )


async def test_retries_the_same_deployment_with_backoff_then_succeeds():
    script = Script(a=[500, 502])
    chosen, stream, first = await router(script, ["a"]).open(script.call)
    assert (chosen.model, first) == ("a", "a:first")
    assert [x async for x in stream] == ["a:second"]
    assert script.calls == ["a", "a", "a"]
    assert script.sleeps == [0.5, 1.0]


async def test_retry_after_sets_the_wait():
    script = Script(a=[(429, 3.0)])
    await router(script, ["a"]).open(script.call)
    assert script.sleeps == [3.0]


async def test_a_retry_goes_to_another_deployment_at_once_and_the_failed_one_cools():
    clock = Clock()
    script = Script(a=[500])
    route = router(script, ["a", "b"], clock=clock)
    chosen, _, _ = await route.open(script.call)
    assert chosen.model == "b" and script.calls == ["a", "b"] and script.sleeps == []
    assert route.cooldowns.remaining() == {"p/a": 5.0}
    for _ in range(4):  # round robin would come back to `a`: it is cooling
        chosen, _, _ = await route.open(script.call)
        assert chosen.model == "b"
    clock.now += 5.0
    calls = []
    for _ in range(2):
        chosen, _, _ = await route.open(script.call)
        calls.append(chosen.model)
    assert sorted(calls) == ["a", "b"]


async def test_a_groups_only_deployment_is_not_cooled():
    script = Script(a=[500])
    route = router(script, ["a"])
    await route.open(script.call)
    assert route.cooldowns.remaining() == {}


async def test_when_every_deployment_cools_they_are_tried_anyway():
    script = Script(a=[500], b=[500])
    route = router(script, ["a", "b"], num_retries=1)
    with pytest.raises(UpstreamFailure):
        await route.open(script.call)
    assert set(route.cooldowns.remaining()) == {"p/a", "p/b"}
    chosen, _, _ = await route.open(script.call)
    assert chosen.model in ("a", "b")


async def test_falls_back_to_the_next_group_after_the_retries():
    script = Script(a=[500, 500, 500])
    chosen, _, first = await router(script, ["a"], ["b"]).open(script.call)
    assert (chosen.model, first) == ("b", "b:first")
    assert script.calls == ["a", "a", "a", "b"]


async def test_a_bad_key_or_missing_model_skips_to_the_fallback_without_retrying():
    for status in (401, 403, 404):
        script = Script(a=[status])
        chosen, _, _ = await router(script, ["a"], ["b"]).open(script.call)
        assert chosen.model == "b" and script.calls == ["a", "b"]


async def test_a_refused_request_is_the_clients_error_at_once():
    script = Script(a=[400])
    with pytest.raises(InvalidRequest, match="err 400"):
        await router(script, ["a", "b"], ["c"]).open(script.call)
    assert script.calls == ["a"]


async def test_the_last_failure_decides_the_error():
    script = Script(a=["timeout"] * 3)
    with pytest.raises(UpstreamTimeout, match=r"did not answer in time.*\(3 attempts\)"):
        await router(script, ["a"]).open(script.call)
    script = Script(a=[(429, 0.0)] * 3)
    with pytest.raises(UpstreamRateLimited):
        await router(script, ["a"]).open(script.call)
    script = Script(a=[500] * 3, b=[503] * 3)
    with pytest.raises(UpstreamFailure, match=r"`p/b` answered 503: err 503 \(6 attempts\)"):
        await router(script, ["a"], ["b"]).open(script.call)
    assert script.calls == ["a", "a", "a", "b", "b", "b"]


async def test_fallbacks_stop_at_max_fallbacks():
    script = Script(a=[500], b=[500], c=[500])
    with pytest.raises(UpstreamFailure):
        await router(script, ["a"], ["b"], ["c"], num_retries=0, max_fallbacks=1).open(script.call)
    assert script.calls == ["a", "b"]
