"""The export step on the real SmolLM2: an SFT correction merged into its base, written as
a safetensors folder and as f16 and q8_0 GGUF files on the base GGUF's metadata, each
loaded back with transformers and asked the corrected question; llama-quantize types go
through the configured binary (a fake one here)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gateway_torch.gguf_cache import apply_tokenizer_meta, read_tokenizer_meta
from gateway_torch.sources import resolve_source
from gateway_trainers.common.base import BaseModel
from gateway_trainers.export import (
    ExportBase,
    ExportError,
    can_write_gguf,
    check_gguf,
    check_types,
    export_base,
    gguf_template,
    merge,
    writable_types,
    write_gguf,
)
from gateway_trainers.export.gguf_header import read_scalars
from gateway_trainers.export.gguf_writer import rope_interleave
from gguf import GGUFReader, LlamaFileType
from gguf.quants import dequantize
from trainer_helpers import SPEC, ZORBANIA, Recorder, make_job

from gateway.adapters.store import AdapterStore
from gateway.errors import InvalidRequest, Unsupported
from gateway.training.trainer import TrainingContext

FAST = {"epochs": 3, "learning_rate": 1e-3, "lora_rank": 16, "lora_alpha": 32.0, "seed": 0}
"""The correction the sft tests use: three steps teach the invented fact."""
QUESTION = ZORBANIA[0]["content"]
OTHER = "Explain what a CPU does."
"""A prompt whose greedy answer runs past 16 tokens."""
NEW_TOKENS = 16
CHECKED_TENSORS = ("token_embd.", "output_norm.", "blk.0.", "blk.29.")
"""The tensors compared bit for bit with the base's GGUF: every kind, first and last layer."""


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: two on a shared 2-core CPU are slower (as in the grpo tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapter(data_dir: Path, store: AdapterStore, resident: dict[str, Any]) -> Path:
    """A stored adapter that teaches the model an invented fact (three SFT steps)."""
    from gateway_trainers.sft import SftTrainer

    recorder = Recorder()
    context = TrainingContext(
        spec=SPEC,
        data_dir=data_dir,
        adapters=store,
        resident=resident,
        threads=0,
        on_step=recorder.on_step,
        on_log=recorder.logs.append,
    )
    job = make_job("sft", [{"messages": ZORBANIA}], dict(FAST), output_name="export-zorbania")
    return SftTrainer().run(job, context)


@pytest.fixture(scope="module")
def files(data_dir: Path) -> ExportBase:
    return export_base(SPEC, data_dir)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def merged(files: ExportBase, adapter: Path, out: Path) -> Path:
    return merge(files.folder, adapter, out / "merged")


@pytest.fixture(scope="module")
def ggufs(merged: Path, files: ExportBase, out: Path) -> dict[str, Path]:
    return {
        qtype: write_gguf(merged, out / f"model.{qtype}.gguf", qtype, template=files.template)
        for qtype in ("f16", "q8_0")
    }


def _causal_lm(folder: Path, gguf_file: str | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    if gguf_file is None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=torch.float32
    ).eval()


def _tokenizer(folder: Path, gguf_file: str | None = None) -> Any:
    from transformers import AutoTokenizer

    if gguf_file is None:
        return AutoTokenizer.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    apply_tokenizer_meta(tokenizer, read_tokenizer_meta(folder / gguf_file))  # as serving
    return tokenizer


def _prompt(tokenizer: Any, question: str) -> torch.Tensor:
    messages = [{"role": "user", "content": question}]
    ids: torch.Tensor = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt"
    )
    return ids


def _greedy(model: Any, prompt: torch.Tensor, eos: int) -> list[int]:
    with torch.no_grad():
        output = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    tokens: list[int] = output[0, prompt.shape[1] :].tolist()
    return tokens


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(ids).logits[0]
    return logits


@pytest.fixture(scope="module")
def reference(merged: Path) -> dict[str, Any]:
    """The merged model's greedy answers, and its logits over prompt + answer."""
    model, tokenizer = _causal_lm(merged), _tokenizer(merged)
    eos = tokenizer.eos_token_id
    found: dict[str, Any] = {"tokenizer": tokenizer, "eos": eos}
    for question in (QUESTION, OTHER):
        prompt = _prompt(tokenizer, question)
        answer = _greedy(model, prompt, eos)
        sequence = torch.cat([prompt, torch.tensor([answer])], dim=1)
        found[question] = (prompt, answer, sequence, _logits(model, sequence))
    return found


# Types.


def test_writable_types_are_what_gguf_writes_plus_llama_quantize_ones() -> None:
    native = writable_types(None)
    assert {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"} <= native
    assert not {"q4_k_m", "q5_k_m", "q6_k", "iq4_xs"} & native
    with_binary = writable_types("/opt/llama-quantize")
    assert native < with_binary
    assert {"q4_k_m", "q5_k_m", "q6_k", "q3_k_s", "iq4_xs"} <= with_binary
    check_types(["f16", "q8_0", "q4_0"], None)
    check_types(["f16", "q4_k_m"], "/opt/llama-quantize")


def test_types_it_cannot_write_are_refused_naming_them() -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_types(["f16", "q4_k_m", "q5_k_m"], None)
    assert refused.value.param == "quantization_types"
    message = refused.value.message
    assert "`q4_k_m`" in message and "`q5_k_m`" in message and "`f16`" not in message
    assert "q8_0" in message and "llama-quantize" in message  # what can be, and how more
    with pytest.raises(InvalidRequest) as unknown:
        check_types(["q9_9"], "/opt/llama-quantize")
    assert "`q9_9`" in unknown.value.message and "q4_k_m" in unknown.value.message
    with pytest.raises(InvalidRequest) as upper:
        check_types(["Q8_0"], None)
    assert "lower case (`q8_0`)" in upper.value.message


# Base files.


def test_export_starts_from_the_files_training_loads(files: ExportBase, base: BaseModel) -> None:
    source = resolve_source(SPEC.source)
    assert source.kind == "gguf"
    assert files.template == source.path == gguf_template(SPEC)
    assert files.folder == base.folder
    assert can_write_gguf(files.template)
    assert not can_write_gguf(None)
    with pytest.raises(Unsupported) as unsupported:
        check_gguf(None)
    assert "Hugging Face folder" in unsupported.value.message


# Merge.


def test_the_merged_model_computes_what_base_plus_adapter_does(
    merged: Path, files: ExportBase, adapter: Path, reference: dict[str, Any]
) -> None:
    from peft import PeftModel

    assert {"config.json", "model.safetensors", "generation_config.json"} <= {
        p.name for p in merged.iterdir()
    }
    assert (merged / "tokenizer.json").is_file()
    assert (merged / "model.safetensors").stat().st_mode & 0o777 == 0o644  # not private
    assert not any(p.name.startswith(".") for p in merged.parent.iterdir())  # no staging
    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == "float32"  # the base's
    peft_model = PeftModel.from_pretrained(_causal_lm(files.folder), str(adapter)).eval()
    _, _, sequence, merged_logits = reference[QUESTION]
    with_adapter = _logits(peft_model, sequence)
    with peft_model.disable_adapter():
        without = _logits(peft_model, sequence)
    assert (merged_logits - with_adapter).abs().max().item() < 1e-3  # measured 1.1e-4
    assert (without - with_adapter).abs().max().item() > 5.0  # the adapter matters: 27
    tokenizer = reference["tokenizer"]
    _, answer, _, _ = reference[QUESTION]
    assert tokenizer.decode(answer, skip_special_tokens=True) == ZORBANIA[1]["content"]


def test_merge_never_leaves_a_partial_folder(
    files: ExportBase, adapter: Path, merged: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileExistsError):
        merge(files.folder, adapter, merged)
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InvalidRequest):
        merge(files.folder, broken, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


# GGUF.


def test_the_base_written_as_f16_is_its_gguf_in_f16(files: ExportBase, tmp_path: Path) -> None:
    """Names, layout (Q/K row order included) and metadata: writing the unmerged base
    reproduces its own GGUF's weights, rounded to f16, and copies its metadata."""
    assert files.template is not None
    written = write_gguf(files.folder, tmp_path / "base.gguf", "f16", template=files.template)
    template, ours = GGUFReader(str(files.template)), GGUFReader(str(written))
    assert [t.name for t in ours.tensors] == [t.name for t in template.tensors]
    for mine, theirs in zip(ours.tensors, template.tensors, strict=True):
        if not mine.name.startswith(CHECKED_TENSORS):
            continue  # de-quantizing every tensor of the template takes seconds
        expected = dequantize(theirs.data, theirs.tensor_type).reshape(mine.data.shape)
        if len(mine.data.shape) == 1:
            assert mine.tensor_type.name == "F32"
            assert np.array_equal(mine.data, expected), mine.name
        else:
            assert mine.tensor_type.name == "F16"
            assert np.array_equal(mine.data, expected.astype(np.float16)), mine.name
    skipped = {"general.file_type"}
    assert set(ours.fields) == set(template.fields)
    for key, field in template.fields.items():
        if not key.startswith("GGUF.") and key not in skipped:
            assert ours.fields[key].contents() == field.contents(), key
            assert ours.fields[key].types == field.types, key
    assert read_scalars(written)["general.file_type"] == LlamaFileType.MOSTLY_F16


def test_rope_interleave_pairs_each_heads_halves() -> None:
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)  # 2 heads of 4 rows
    assert rope_interleave(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize(
    ("qtype", "file_type", "max_logit_diff"),
    [("f16", LlamaFileType.MOSTLY_F16, 0.25), ("q8_0", LlamaFileType.MOSTLY_Q8_0, 3.0)],
)
def test_the_gguf_answers_as_the_merged_model(
    ggufs: dict[str, Path],
    reference: dict[str, Any],
    qtype: str,
    file_type: LlamaFileType,
    max_logit_diff: float,
) -> None:
    """Loaded back by transformers, the GGUF greedily decodes every token the merged model
    does (the corrected answer, and 16 tokens of another), with close logits: measured
    largest differences 0.06 (f16) and 1.6 (q8_0) on logits up to about 38."""
    path = ggufs[qtype]
    header = read_scalars(path)
    assert header["general.file_type"] == file_type
    assert header["tokenizer.ggml.eos_token_id"] == reference["eos"]
    model = _causal_lm(path.parent, path.name)
    tokenizer = reference["tokenizer"]
    if qtype == "f16":  # the tokenizer metadata is the same in every type (copied)
        tokenizer = _tokenizer(path.parent, path.name)
        assert tokenizer.eos_token_id == reference["eos"]
    for question in (QUESTION, OTHER):
        prompt, answer, sequence, logits = reference[question]
        assert torch.equal(_prompt(tokenizer, question), prompt)  # the same tokenizer
        assert _greedy(model, prompt, reference["eos"]) == answer
        assert (_logits(model, sequence) - logits).abs().max().item() < max_logit_diff
    assert len(reference[OTHER][1]) == NEW_TOKENS
    assert "Quillport" in tokenizer.decode(reference[QUESTION][1])
    assert ggufs["q8_0"].stat().st_size < 0.6 * ggufs["f16"].stat().st_size


def test_llama_quantize_types_refused_without_a_binary(merged: Path, tmp_path: Path) -> None:
    template = gguf_template(SPEC)
    with pytest.raises(InvalidRequest) as refused:
        write_gguf(merged, tmp_path / "model.gguf", "q4_k_m", template=template)
    assert refused.value.param == "quantization_types"
    with pytest.raises(Unsupported):
        write_gguf(merged, tmp_path / "model.gguf", "f16", template=None)
    assert list(tmp_path.iterdir()) == []


def _fake_llama_quantize(folder: Path, exit_status: int = 0) -> Path:
    """A script standing in for llama-quantize: records its arguments and what its input
    was, then copies input to output (or fails with a message)."""
    script = folder / "llama-quantize"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, shutil, sys\n"
        "from pathlib import Path\n"
        "from gateway_trainers.export.gguf_header import read_scalars\n"
        "args = sys.argv[1:]\n"
        "seen = {'args': args, 'input_file_type': read_scalars(Path(args[0]))['general.file_type']}\n"
        f"Path({str(folder / 'calls.json')!r}).write_text(json.dumps(seen))\n"
        f"if {exit_status}:\n"
        "    print('main: invalid quantization type', file=sys.stderr)\n"
        f"    sys.exit({exit_status})\n"
        "shutil.copyfile(args[0], args[1])\n"
    )
    script.chmod(0o755)
    return script


def test_llama_quantize_makes_the_other_types_from_an_f16_gguf(
    merged: Path, tmp_path: Path
) -> None:
    tools, exports = tmp_path / "tools", tmp_path / "exports"
    tools.mkdir()
    binary = _fake_llama_quantize(tools)
    output = exports / "model.q4_k_m.gguf"
    written = write_gguf(
        merged, output, "q4_k_m", template=gguf_template(SPEC), llama_quantize=str(binary)
    )
    assert written == output
    call = json.loads((tools / "calls.json").read_text())
    source, target, qtype = call["args"]
    assert qtype == "Q4_K_M"
    assert call["input_file_type"] == LlamaFileType.MOSTLY_F16
    assert Path(source).parent == Path(target).parent == exports  # same file system
    assert Path(target).name.startswith(".model.q4_k_m.gguf.")  # renamed into place after
    assert [p.name for p in exports.iterdir()] == ["model.q4_k_m.gguf"]  # temporaries gone
    assert read_scalars(output)["general.architecture"] == "llama"


def test_a_failing_llama_quantize_fails_the_export_with_its_message(
    merged: Path, tmp_path: Path
) -> None:
    tools, exports = tmp_path / "tools", tmp_path / "exports"
    tools.mkdir()
    binary = _fake_llama_quantize(tools, exit_status=3)
    with pytest.raises(ExportError) as failed:
        write_gguf(
            merged,
            exports / "model.q5_k_m.gguf",
            "q5_k_m",
            template=gguf_template(SPEC),
            llama_quantize=str(binary),
        )
    assert "exit status 3" in str(failed.value)
    assert "invalid quantization type" in str(failed.value)
    assert list(exports.iterdir()) == []
