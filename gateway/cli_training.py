"""`gateway train ...` and `gateway adapters ...`: training jobs and LoRA adapters of a
running server, over its HTTP API (Kiln's `/v1/train/*` and `/v1/adapters/*` routes).

Every command takes `--url` (default: the settings' `[server]` host and port), `--api-key`
(or `GATEWAY_API_KEY`; sent as a bearer token) and, where it applies, `--model`. An error
answer is printed with its code and message (Kiln's envelope, `{"detail"}` or plain text)
and the command exits 1.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import click

from gateway.cli_http import AS_JSON, MODEL, client, echo_json, quoted, server_options

ACTIVE = ("queued", "running")
BAR_WIDTH = 20
FOLLOW_INTERVAL = 0.5


# ---- reading training files ---------------------------------------------------------------


def read_records(path: str) -> Any:
    """A JSON document, else JSONL (one JSON value a line) as a list."""
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"Cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except ValueError:
        pass
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise click.ClickException(
                f"{path} is neither JSON nor JSONL: line {number}: {exc}"
            ) from None
    return records


def request_body(path: str, items: str, marker: str, other: tuple[str, str]) -> dict[str, Any]:
    """A whole request `{items, config}` read from `path`: the file is that body, a list
    of items, or JSONL (one item a line); a lone item (it has `marker`) is a list of one."""
    content = read_records(path)
    if isinstance(content, dict) and other[0] in content and items not in content:
        raise click.ClickException(
            f"{path} holds `{other[0]}`: it is a request for `gateway train {other[1]}`."
        )
    if isinstance(content, dict) and items in content:
        body = dict(content)
    elif isinstance(content, dict) and marker in content:
        body = {items: [content]}
    elif isinstance(content, list):
        body = {items: content}
    else:
        raise click.ClickException(
            f"{path} is not a training request: give a JSON object with `{items}`, a JSON "
            f"list of them, or JSONL with one a line."
        )
    if not isinstance(body[items], list) or not body[items]:
        raise click.ClickException(f"{path} has no {items}.")
    if body.get("config") is not None and not isinstance(body["config"], dict):
        raise click.ClickException(f"{path}: `config` must be a JSON object.")
    return body


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The config settings every training command takes (None: the file's, or the
    server's default)."""
    options = [
        click.option("--epochs", type=click.IntRange(min=1), help="passes over the data"),
        click.option("--learning-rate", type=float),
        click.option("--lora-rank", type=click.IntRange(min=1)),
        click.option("--lora-alpha", type=float),
        click.option("--output-name", help="the adapter to write"),
        click.option("--base-adapter", help="continue training this adapter"),
        click.option(
            "--auto-load/--no-auto-load",
            default=None,
            help="make the adapter the model's default when the job completes (default: yes)",
        ),
        click.option(
            "--checkpoint-interval",
            type=click.IntRange(min=1),
            help="every N steps also save <output-name>-checkpoint-<step>",
        ),
        click.option("--seed", type=int),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def submit(kind: str, body: dict[str, Any], model: str | None, **overrides: Any) -> str:
    """POST `body` with the overrides merged into its config; print what was queued and
    return the job's id."""
    config = dict(body.get("config") or {})
    config.update({key: value for key, value in overrides.items() if value is not None})
    body = {**body, "config": config}
    if model is not None:
        body["model"] = model
    answer = client().call("POST", f"/v1/train/{kind}", body)
    click.echo(answer.get("message") or f"Queued {kind} job")
    details = [f"job {answer['job_id']}"]
    if answer.get("adapter_name"):
        details.append(f"adapter {answer['adapter_name']}")
    if answer.get("model"):
        details.append(f"model {answer['model']}")
    click.echo(", ".join(details))
    return str(answer["job_id"])


# ---- progress -----------------------------------------------------------------------------


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, int(fraction * width)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress(job: dict[str, Any]) -> str:
    """`[#####---------------] 12/40 loss 1.234` (a percentage when the server sends no
    step counts)."""
    total, step = job.get("total_steps"), job.get("step")
    if isinstance(total, int) and isinstance(step, int):
        done = 1.0 if job.get("state") == "completed" else (step / total if total else 0.0)
        text = f"{bar(done)} {step}/{total or '?'}"
    else:
        done = float(job.get("progress") or 0.0)
        text = f"{bar(done)} {done:.0%}"
    if job.get("current_loss") is not None:
        text += f" loss {job['current_loss']:.3f}"
    return text


def job_line(job: dict[str, Any]) -> str:
    """One job on one line: its adapter, then its progress or how it ended."""
    name, state = job.get("adapter_name") or job["job_id"][:8], job["state"]
    if state == "queued":
        return f"{name}  queued"
    if state == "running":
        return f"{name}  {progress(job)}"
    if state == "completed":
        return f"{name}  {progress(job)}  completed"
    return f"{name}  {state}: {job.get('error') or 'no reason given'}"


class Display:
    """Lines that change in place on a terminal; elsewhere, each changed line once."""

    def __init__(self, out: TextIO, tty: bool, width: int | None = None):
        self.out, self.tty = out, tty
        self.width = width or shutil.get_terminal_size().columns
        self.drawn = 0
        self.last: dict[str, str] = {}

    def update(self, ended: Iterable[str], active: dict[str, str]) -> None:
        """Print the lines of jobs that `ended` (for good) and redraw the `active` ones."""
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            # A redrawn line must not wrap: moving up counts lines, not rows.
            lines = [*ended, *(line[: self.width - 1] for line in active.values())]
            self.drawn = len(active)
        else:
            lines = list(ended)
            lines += [line for key, line in active.items() if self.last.get(key) != line]
            self.last.update(active)
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()


def follow_jobs(job_id: str | None, interval: float) -> int:
    """Redraw the progress of the queued and running jobs (or of `job_id`) until none is
    left (or it ended), printing each job's end once; 1 when the followed job failed or
    was cancelled."""
    api = client()
    display = Display(sys.stdout, sys.stdout.isatty())
    watched: set[str] = set() if job_id is None else {job_id}
    followed_any = False
    while True:
        if job_id is not None:
            jobs = [api.call("GET", f"/v1/train/status/{quoted(job_id)}")]
        else:
            jobs = list(api.call("GET", "/v1/train/status") or [])
            jobs.sort(key=lambda job: job.get("created_at") or "")
        active = {job["job_id"]: job_line(job) for job in jobs if job["state"] in ACTIVE}
        ended = [job for job in jobs if job["state"] not in ACTIVE and job["job_id"] in watched]
        watched = (watched | set(active)) - {job["job_id"] for job in ended}
        followed_any = followed_any or bool(active)
        display.update([job_line(job) for job in ended], active)
        if job_id is not None and ended:
            return 0 if ended[0]["state"] == "completed" else 1
        if job_id is None and not active:
            if not followed_any:
                click.echo("No training job is queued or running.")
            return 0
        time.sleep(interval)


# ---- gateway train ------------------------------------------------------------------------


@click.group()
def train() -> None:
    """Submit training jobs to a running gateway and follow them."""


@train.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@config_options
@MODEL
@click.option("--follow", is_flag=True, help="follow the job until it ends")
@server_options
def sft(file: str, model: str | None, follow: bool, **config: Any) -> None:
    """Queue an SFT job on the examples of FILE.

    FILE is a whole request (`{"examples": [...], "config": {...}}`), a JSON list of
    examples (`{"messages": [{"role", "content"}, ...]}`), or JSONL with one example a
    line; `-` reads standard input. Options override the file's config.
    """
    body = request_body(file, "examples", "messages", ("groups", "grpo"))
    _submit_and_follow("sft", body, model, follow, config)


@train.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@config_options
@click.option("--kl-coeff", type=click.FloatRange(min=0), help="weight of the KL penalty")
@click.option("--clip-epsilon", type=click.FloatRange(min=0, min_open=True))
@MODEL
@click.option("--follow", is_flag=True, help="follow the job until it ends")
@server_options
def grpo(file: str, model: str | None, follow: bool, **config: Any) -> None:
    """Queue a GRPO job on the scored completions of FILE.

    FILE is a whole request (`{"groups": [...], "config": {...}}`), a JSON list of groups
    (`{"messages": [...], "completions": [{"text", "reward"}, ...]}`), or JSONL with one
    group a line; `-` reads standard input. Options override the file's config.
    """
    body = request_body(file, "groups", "completions", ("examples", "sft"))
    _submit_and_follow("grpo", body, model, follow, config)


def _submit_and_follow(
    kind: str, body: dict[str, Any], model: str | None, follow_it: bool, config: dict[str, Any]
) -> None:
    job_id = submit(kind, body, model, **config)
    if follow_it:
        sys.exit(follow_jobs(job_id, FOLLOW_INTERVAL))


@train.command()
@click.argument("job_id", required=False)
@click.option("--follow", is_flag=True, help="redraw the progress until the jobs end")
@click.option(
    "--interval",
    type=click.FloatRange(min=0),
    default=FOLLOW_INTERVAL,
    show_default=True,
    help="seconds between polls with --follow",
)
@AS_JSON
@server_options
def status(job_id: str | None, follow: bool, interval: float, as_json: bool) -> None:
    """Show the training jobs, or JOB_ID; with --follow, their progress as it goes."""
    if follow:
        sys.exit(follow_jobs(job_id, interval))
    if job_id is not None:
        job = client().call("GET", f"/v1/train/status/{quoted(job_id)}")
        echo_json(job) if as_json else _show_job(job)
        return
    jobs = client().call("GET", "/v1/train/status") or []
    if as_json:
        echo_json(jobs)
        return
    if not jobs:
        click.echo("No training jobs.")
    for job in sorted(jobs, key=lambda job: job.get("created_at") or ""):
        click.echo(_row(job))


def _row(job: dict[str, Any]) -> str:
    """A job in the status table: id, type, state, adapter and how far it got."""
    state = job["state"]
    if state in ("running", "completed"):
        detail = progress(job)
    elif state == "queued":
        detail = ""
    else:
        detail = job.get("error") or ""
    columns = [job["job_id"], f"{job.get('job_type', ''):<8}", f"{state:<9}"]
    return "  ".join([*columns, job.get("adapter_name") or "", detail]).rstrip()


def _show_job(job: dict[str, Any]) -> None:
    rows = [
        ("job", job["job_id"]),
        ("type", job.get("job_type")),
        ("model", job.get("model")),
        ("state", job["state"]),
        ("adapter", job.get("adapter_name")),
        ("progress", progress(job)),
        ("elapsed", f"{job['elapsed_secs']:.1f}s" if "elapsed_secs" in job else None),
        ("error", job.get("error")),
    ]
    history = job.get("loss_history") or []
    if history:
        rows.append(("loss", f"{history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}"))
    for label, value in rows:
        if value is not None:
            click.echo(f"{label + ':':<10}{value}")


@train.command()
@click.argument("job_id")
@server_options
def cancel(job_id: str) -> None:
    """Cancel JOB_ID, which must still be queued."""
    client().call("DELETE", f"/v1/train/queue/{quoted(job_id)}")
    click.echo(f"Cancelled job {job_id}.")


# ---- gateway adapters ---------------------------------------------------------------------


@click.group()
def adapters() -> None:
    """List, load, unload and delete the LoRA adapters of a running gateway."""


@adapters.command("list")
@MODEL
@AS_JSON
@server_options
def list_adapters(model: str | None, as_json: bool) -> None:
    """List the adapters; `*` marks the model's default."""
    answer = client().call("GET", "/v1/adapters", query={"model": model})
    if as_json:
        echo_json(answer)
        return
    default = {entry["name"] for entry in answer.get("default") or []}
    if not default and answer.get("active"):
        default = {answer["active"]}
    model_name = answer.get("model")
    title = f"Adapters of {model_name}" if model_name else "Adapters"
    click.echo(f"{title} (default: {answer.get('active') or 'the base model'})")
    for entry in answer.get("available") or []:
        mark = "*" if entry["name"] in default else " "
        size = _size(entry.get("size_bytes") or 0)
        click.echo(f"{mark} {entry['name']:<32} {size:>9}  {entry.get('modified_at') or ''}")


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


@adapters.command()
@click.argument("name")
@click.option("--scale", type=float, help="the adapter's scale (default 1.0)")
@MODEL
@server_options
def load(name: str, scale: float | None, model: str | None) -> None:
    """Make NAME the adapter that requests naming none are served with."""
    body: dict[str, Any] = {"name": name}
    if scale is not None:
        body["scale"] = scale
    if model is not None:
        body["model"] = model
    answer = client().call("POST", "/v1/adapters/load", body)
    where = f" for {answer['model']}" if answer.get("model") else ""
    click.echo(f"Loaded {answer.get('name') or name}{where}.")


@adapters.command()
@MODEL
@server_options
def unload(model: str | None) -> None:
    """Serve the base model again to requests that name no adapter."""
    answer = client().call("POST", "/v1/adapters/unload", {} if model is None else {"model": model})
    where = f" for {answer['model']}" if answer and answer.get("model") else ""
    click.echo(f"Unloaded: serving the base model{where}.")


@adapters.command()
@click.argument("name")
@MODEL
@server_options
def delete(name: str, model: str | None) -> None:
    """Delete adapter NAME (and its checkpoints)."""
    client().call("DELETE", f"/v1/adapters/{quoted(name)}", query={"model": model})
    click.echo(f"Deleted {name}.")
