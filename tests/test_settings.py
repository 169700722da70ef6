"""Settings: file < environment < CLI, refused with the key and the reason when invalid."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import DEFAULT_MODELS, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults_serve_the_default_models(tmp_path):
    settings = load_settings(environ={})
    assert settings.served_models() == list(DEFAULT_MODELS)
    assert settings.served_models()[0].name == "smollm2-135m-instruct"
    assert settings.server.port == 8000


def test_precedence_cli_over_env_over_file(tmp_path):
    config = write(tmp_path, '[server]\nport = 9001\nhost = "0.0.0.0"\nlog_level = "debug"\n')
    assert load_settings(config, environ={}).server.port == 9001
    env = {"GATEWAY_PORT": "9002", "GATEWAY_LOG_LEVEL": "warning"}
    settings = load_settings(config, environ=env)
    assert (settings.server.port, settings.server.host, settings.server.log_level) == (
        9002,
        "0.0.0.0",
        "warning",
    )
    settings = load_settings(config, environ=env, overrides={"server.port": 9003})
    assert settings.server.port == 9003


def test_models_routes_and_nested_env(tmp_path):
    config = write(
        tmp_path,
        """
data_dir = "/srv/gateway"
[routes]
metrics = false
[[models]]
name = "tiny"
backend = "echo"
options = { delay = 0.1 }
""",
    )
    settings = load_settings(config, environ={"GATEWAY_ROUTES__OPENAI": "false"})
    assert settings.routes == {"metrics": False, "openai": False}
    assert [m.name for m in settings.served_models()] == ["tiny"]
    assert settings.served_models()[0].options == {"delay": 0.1}
    assert settings.data_path() == Path("/srv/gateway")


def test_data_dir_is_resolved_when_used(monkeypatch, tmp_path):
    settings = load_settings(environ={})
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert settings.data_path() == tmp_path / "gateway"


def test_model_flag_narrows_or_replaces(tmp_path):
    settings = load_settings(environ={}, overrides={"model": "all-minilm-l6-v2"})
    assert [m.name for m in settings.served_models()] == ["all-minilm-l6-v2"]
    settings = load_settings(environ={"GATEWAY_MODEL": "/models/other.Q8_0.gguf"})
    [spec] = settings.served_models()
    assert (spec.name, spec.backend, spec.source) == (
        "other.Q8_0",
        "auto",
        "/models/other.Q8_0.gguf",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\nport = "eighty"\n', "$.server.port"),
        ("[server]\nport = 70000\n", "$.server.port"),
        ("[server]\nprot = 8000\n", "prot"),
        ('[[models]]\nbackend = "echo"\n', "name"),
        ('[[models]]\nname = "has space"\nbackend = "echo"\n', "$.models[0].name"),
        ('[[api_keys]]\nkey = "short"\n', "$.api_keys[0].key"),
        ('[[api_keys]]\nkey = "long-enough-key"\nscopes = ["root"]\n', "$.api_keys[0].scopes[0]"),
        ("[server\n", "gateway.toml"),
    ],
)
def test_invalid_files_are_refused_with_key_and_reason(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert expected in str(info.value)
    assert "gateway.toml" in str(info.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_family_switched_off_answers_404(make_client):
    client = make_client(routes={"openai": False})
    response = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 404
    assert client.get("/v1/models").status_code == 404
    assert client.get("/health").status_code == 200


def test_unknown_family_is_refused(make_client):
    with pytest.raises(ConfigError, match=r"routes\.kobolt: no such route family"):
        make_client(routes={"kobolt": True})


def test_unknown_backend_is_refused(make_client):
    from gateway.engine import ModelSpec

    with pytest.raises(ConfigError, match="unknown backend `nope`"):
        make_client(models=[ModelSpec(name="m", backend="nope")])


def test_llamacpp_ctx_size_and_parallel_set_torch_slots():
    from gateway.engine import ModelSpec
    from gateway.settings import LlamaCppSettings, Settings

    settings = Settings(
        models=[
            ModelSpec(name="a", backend="torch"),
            ModelSpec(name="b", backend="torch", options={"context_length": 512}),
            ModelSpec(name="c", backend="echo"),
            ModelSpec(name="d", backend="auto"),
            ModelSpec(name="e", backend="onnx", options={"slots": 2}),
        ],
        llamacpp=LlamaCppSettings(ctx_size=8192, parallel=4),
    )
    a, b, c, d, e = settings.served_models()
    assert a.options == {"slots": 4, "context_length": 2048}
    assert b.options == {"slots": 4, "context_length": 512}  # an explicit option wins
    assert c.options == {}
    assert d.options == a.options
    assert e.options == {"slots": 2, "context_length": 2048}


def test_the_example_config_loads():
    from pathlib import Path

    from gateway.settings import load_settings

    example = Path(__file__).resolve().parents[1] / "examples" / "gateway.toml"
    settings = load_settings(example, environ={})
    assert settings.served_models()[0].name == "smollm2-135m-instruct"


def test_training_webhook_from_environment_and_file(tmp_path):
    assert load_settings(environ={}).training.webhook_url is None
    url = "http://127.0.0.1:9911/hooks/training"
    short = load_settings(environ={"GATEWAY_TRAINING_WEBHOOK_URL": url}).training
    nested = load_settings(environ={"GATEWAY_TRAINING__WEBHOOK_URL": url}).training
    assert short.webhook_url == nested.webhook_url == url
    env = {
        "GATEWAY_TRAINING_WEBHOOK_SECRET": "hook-secret",
        "GATEWAY_TRAINING__WEBHOOK_ATTEMPTS": "2",
        "GATEWAY_TRAINING__WEBHOOK_TIMEOUT": "1.5",
    }
    training = load_settings(environ=env).training
    assert training.webhook_secret == "hook-secret"
    assert (training.webhook_attempts, training.webhook_timeout) == (2, 1.5)
    config = write(tmp_path, '[training]\nwebhook_url = "http://file.example/hook"\n')
    assert load_settings(config, environ={}).training.webhook_url == "http://file.example/hook"
    over = load_settings(config, environ={"GATEWAY_TRAINING_WEBHOOK_URL": url})
    assert over.training.webhook_url == url  # the environment wins over the file
    with pytest.raises(ConfigError, match="webhook_attempts"):
        load_settings(environ={"GATEWAY_TRAINING__WEBHOOK_ATTEMPTS": "0"})


def test_database_url_names_sqlite_or_postgresql(tmp_path):
    default = load_settings(environ={"GATEWAY_DATA_DIR": str(tmp_path)})
    assert default.database() == f"sqlite:///{tmp_path / 'gateway.db'}"
    shared = load_settings(environ={"GATEWAY_DATABASE_URL": "postgresql://gw@db:5432/gateway"})
    assert shared.database() == "postgresql://gw@db:5432/gateway"
    with pytest.raises(ConfigError, match="database_url `mysql://x`: use `sqlite:///"):
        load_settings(environ={"GATEWAY_DATABASE_URL": "mysql://x"})
