"""The ONNX runner on the real SmolLM2: its logits against transformers', rows moving
between steps, prefix reuse, slot state, the quantized exports' distance from fp32 and
their batch invariance, smoothing's exactness."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gateway_engine.runner import Work
from gateway_onnx.export import Variant, ensure_exported, model_dir
from gateway_onnx.graph import UnsupportedModel, read_shape
from gateway_onnx.runner import OnnxRunner


@pytest.fixture(scope="module")
def reference(smol_folder: Path) -> Iterator[object]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smol_folder, dtype=torch.float32).eval()
    yield model


def last_logits(model: object, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1].float()  # type: ignore[operator]


def ids(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (count,), generator=generator).tolist()


def runner(model: Path, folder: Path, slots: int, context: int = 128) -> OnnxRunner:
    return OnnxRunner(model, read_shape(folder), slots, context, name="test")


def test_fp32_logits_match_transformers(fp32_model, smol_folder, reference):
    """Chunked prefills and decodes mixed in shared steps give transformers' logits."""
    run = runner(fp32_model, smol_folder, slots=3)
    a, b = ids(30, 1), ids(12, 2)
    first = run.forward([Work(0, 0, a[:20], False), Work(2, 0, b[:11], True)])
    second = run.forward([Work(2, 11, b[11:], True), Work(0, 20, a[20:29], True)])
    third = run.forward([Work(0, 29, a[29:], True)])
    assert first.shape == (1, 49152)
    close = {"atol": 1e-3, "rtol": 1e-3}
    torch.testing.assert_close(first[0], last_logits(reference, b[:11]), **close)
    torch.testing.assert_close(second[0], last_logits(reference, b), **close)
    torch.testing.assert_close(second[1], last_logits(reference, a[:29]), **close)
    torch.testing.assert_close(third[0], last_logits(reference, a), **close)


def test_rows_move_and_their_caches_follow(fp32_model, smol_folder, reference):
    """Decode sets that change every step make slots swap rows; every slot still sees
    only its own sequence."""
    run = runner(fp32_model, smol_folder, slots=4)
    seqs = {slot: ids(5 + slot, 10 + slot) for slot in range(4)}
    run.forward([Work(slot, 0, tokens, False) for slot, tokens in seqs.items()])
    for step, group in enumerate([[3], [2, 3], [0, 3], [1, 2, 3], [0], [3, 0, 1, 2]]):
        works = []
        for slot in group:
            token = 200 + 17 * step + slot
            works.append(Work(slot, len(seqs[slot]), [token], True))
            seqs[slot] = [*seqs[slot], token]
        out = run.forward(works)
        for row, slot in enumerate(group):
            expected = last_logits(reference, seqs[slot])
            torch.testing.assert_close(out[row], expected, atol=1e-3, rtol=1e-3)


def test_a_cached_prefix_is_reused_from_its_length(fp32_model, smol_folder, reference):
    run = runner(fp32_model, smol_folder, slots=2)
    a = ids(9, 3)
    run.forward([Work(1, 0, a, False)])
    out = run.forward([Work(1, 4, [77, 78], True)])  # rewrite from position 4
    torch.testing.assert_close(
        out[0], last_logits(reference, [*a[:4], 77, 78]), atol=1e-3, rtol=1e-3
    )


def test_slot_state_round_trips(fp32_model, smol_folder):
    run = runner(fp32_model, smol_folder, slots=3)
    tokens = ids(10, 5)
    run.forward([Work(0, 0, tokens, False)])
    saved = run.export_slot(0, len(tokens))
    assert [tuple(t.shape) for t in saved[:1]] == [(3, 10, 64)]
    assert run.import_slot(2, saved) == len(tokens)
    original = run.forward([Work(0, len(tokens), [7], True)])
    resumed = run.forward([Work(2, len(tokens), [7], True)])
    torch.testing.assert_close(resumed, original)


VARIANTS = {
    "default": (Variant("int8"), 0.02),
    "weight-only, blocks of 128": (Variant("int8", block_size=128, integer=()), 0.02),
    "every projection integer": (
        Variant("int8", integer=("qkv", "out", "gate_up", "down", "head")),
        0.05,
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_int8_stays_close_to_fp32(fp32_model, smol_folder, data_dir, name):
    """Teacher-forced over one sequence: the mean KL of an int8 export's next-token
    distribution from fp32's is small, and the top choice mostly the same: the default
    (out and gate/up integer matmuls, the rest weight-only in blocks of 64), weight-only in
    coarser blocks, and every projection integer (the least exact)."""
    from transformers import AutoTokenizer

    variant, bound = VARIANTS[name]
    int8_model = ensure_exported(smol_folder, data_dir, variant)
    assert int8_model.parent == model_dir(smol_folder, data_dir, variant)
    exact, quantized = runner(fp32_model, smol_folder, 1), runner(int8_model, smol_folder, 1)
    text = (
        "The water cycle describes how water evaporates from the surface of the earth, "
        "rises into the atmosphere, cools and condenses into clouds, and falls again as rain."
    )
    tokens = AutoTokenizer.from_pretrained(smol_folder)(text)["input_ids"]
    kls, agree = [], []
    for pos in range(8, len(tokens)):
        work = [Work(0, 0, tokens[:pos], True)]
        p = torch.log_softmax(exact.forward(work)[0], -1)
        q = torch.log_softmax(quantized.forward(work)[0], -1)
        kls.append(float((p.exp() * (p - q)).sum()))
        agree.append(int(p.argmax()) == int(q.argmax()))
    assert sum(kls) / len(kls) < bound
    assert sum(agree) / len(agree) >= 0.85
    assert max(kls) < 10 * bound


@pytest.mark.parametrize(
    ("name", "pads"),
    [("default", False), ("weight-only, blocks of 128", True), ("every projection integer", False)],
)
def test_a_rows_logits_do_not_depend_on_its_neighbours(smol_folder, data_dir, name, pads):
    """Bit for bit, whether a sequence decodes alone or beside others: integer matmuls
    quantize each row on its own; weight-only int8 in blocks of 128 takes the scratch row
    (ONNX Runtime's one-row kernel rounds differently there)."""
    model = ensure_exported(smol_folder, data_dir, VARIANTS[name][0])
    prompts = [ids(12 + slot, 40 + slot) for slot in range(4)]

    def decode(rows: int) -> list[torch.Tensor]:
        run = runner(model, smol_folder, slots=4)
        assert run.pads_single_tokens is pads
        for slot in range(rows):
            run.forward([Work(slot, 0, prompts[slot][:-1], False)])
        out, step = [], [p[-1] for p in prompts[:rows]]
        for position in range(11, 17):
            logits = run.forward(
                [Work(slot, position + slot, [step[slot]], True) for slot in range(rows)]
            )
            out.append(logits[0])
            step = [int(token) for token in logits.argmax(-1)]
        return out

    alone = decode(1)
    for rows in (2, 4):
        assert all(torch.equal(a, b) for a, b in zip(alone, decode(rows), strict=True))


def test_the_export_is_cached_per_precision(smol_folder, data_dir, fp32_model):
    assert ensure_exported(smol_folder, data_dir, Variant("fp32")) == fp32_model
    written = fp32_model.stat().st_mtime_ns
    assert ensure_exported(smol_folder, data_dir, Variant("fp32")).stat().st_mtime_ns == written
    assert model_dir(smol_folder, data_dir, Variant("int8")) != fp32_model.parent
    assert model_dir(smol_folder, data_dir, Variant("fp32")) == fp32_model.parent
    leftovers = [p for p in fp32_model.parent.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_model_the_builder_cannot_write_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModel, match="model type `bert`"):
        read_shape(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4}})
    )
    with pytest.raises(UnsupportedModel, match="rope scaling"):
        read_shape(tmp_path)


def test_fresh_prompts_share_a_padded_run_and_continuations_run_alone(
    fp32_model, smol_folder, reference
):
    run = runner(fp32_model, smol_folder, slots=4, context=32)
    a, b, c, d = ids(26, 7), ids(10, 8), ids(31, 9), ids(4, 10)
    run.forward([Work(0, 0, a[:24], False), Work(2, 0, c[:27], False)])
    out = run.forward(
        [
            Work(0, 24, a[24:], True),
            Work(1, 0, b, True),
            Work(2, 27, c[27:], True),
            Work(3, 0, d, True),
        ]
    )
    close = {"atol": 1e-3, "rtol": 1e-3}
    for row, tokens in enumerate([a, b, c, d]):
        torch.testing.assert_close(out[row], last_logits(reference, tokens), **close)


@pytest.fixture(scope="module")
def smoothed_fp32(smol_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The plain and LoRA float32 graphs with every norm-fed input smoothed."""
    import onnx
    from gateway_onnx.calibrate import input_peaks
    from gateway_onnx.graph import SMOOTHED, build_graph

    peaks = input_peaks(smol_folder)
    paths = []
    for lora in (False, True):
        path = tmp_path_factory.mktemp("smoothed") / "model.onnx"
        model = build_graph(smol_folder, lora, peaks=peaks, smoothed=SMOOTHED)
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.data")
        paths.append(path)
    return paths


@pytest.mark.parametrize("smoothed", [False, True])
def test_lora_rows_match_the_torch_runner(
    smol_folder, data_dir, reference, tmp_path, request, smoothed
):
    """One step mixing two adapters, a composition of both, scales, the base model and a
    prefill chunk gives the torch runner's logits for the same work (the torch runner's
    LoRA is checked against peft in its own tests). Smoothed, too: folding the factors
    into the norms and the projections computes the same model, and the adapters read
    the unsmoothed inputs."""
    from types import SimpleNamespace

    from gateway_engine.lora.weights import read_adapter
    from gateway_torch.lora.synthetic import write_random_adapter
    from gateway_torch.runners.flat import FlatRunner

    first = read_adapter(
        write_random_adapter(reference, tmp_path / "a", rank=8, seed=1), reference, name="a"
    )
    second = read_adapter(
        write_random_adapter(
            reference, tmp_path / "b", rank=4, targets=("q_proj", "v_proj"), seed=2
        ),
        reference,
        name="b",
    )
    lora_model = ensure_exported(smol_folder, data_dir, Variant("fp32", lora=True))
    plain_model = ensure_exported(smol_folder, data_dir, Variant("fp32"))
    if smoothed:
        plain_model, lora_model = request.getfixturevalue("smoothed_fp32")
    onnx = OnnxRunner(plain_model, read_shape(smol_folder), 5, 64, lora_model=lora_model)
    loaded = SimpleNamespace(model=reference, device=torch.device("cpu"), tokenizer_size=49152)
    flat = FlatRunner(loaded, 5, 64)  # type: ignore[arg-type]
    sets = [((first, 1.0),), ((second, 1.0),), (), ((first, 0.5), (second, 2.0)), ((second, 1.5),)]
    prompts = [ids(6 + slot, 30 + slot) for slot in range(5)]
    steps = [
        [Work(slot, 0, prompts[slot], True, sets[slot]) for slot in range(4)],
        [Work(slot, len(prompts[slot]), [11 + slot], True, sets[slot]) for slot in range(4)]
        + [Work(4, 0, prompts[4], True, sets[4])],
    ]
    with torch.inference_mode():
        for works in steps:
            got, expected = onnx.forward(works), flat.forward(works)
            torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)
        base = onnx.forward([Work(0, 7, [5], True)])
        adapted = onnx.forward([Work(0, 7, [5], True, sets[0])])
    # The adapters change the answer, and a run without them takes the plain graph.
    assert not torch.allclose(adapted, base, atol=0.1)
    assert {key[0] for key in onnx._bindings} == {True, False}


def test_int8_adapters_follow_float_and_leave_each_row_its_own(
    smol_folder, data_dir, reference, tmp_path
):
    """The int8 export's adapters (int8 weights, integer matmuls, one segment per adapter
    set): an adapter's effect on the logits is the float32 graph's, within quantization
    error; and a row's logits are bit for bit the same alone as beside rows with other
    adapters, a composition and none."""
    from gateway_engine.lora.weights import read_adapter
    from gateway_torch.lora.synthetic import write_random_adapter

    first = read_adapter(
        write_random_adapter(reference, tmp_path / "a", rank=16, seed=3), reference, name="a"
    )
    second = read_adapter(
        write_random_adapter(reference, tmp_path / "b", rank=8, targets=("v_proj",), seed=4),
        reference,
        name="b",
    )
    shape = read_shape(smol_folder)

    def make(precision: str) -> OnnxRunner:
        plain = ensure_exported(smol_folder, data_dir, Variant(precision))
        lora = ensure_exported(smol_folder, data_dir, Variant(precision, lora=True))
        return OnnxRunner(plain, shape, 4, 64, lora_model=lora)

    sets = [((first, 1.0),), ((second, 1.0),), (), ((first, 0.5), (second, 2.0))]
    prompts = [ids(9 + slot, 60 + slot) for slot in range(4)]
    int8, fp32 = make("int8"), make("fp32")
    with torch.inference_mode():
        effects = []
        for run in (int8, fp32):
            run.forward([Work(s, 0, prompts[s], False, sets[s]) for s in range(4)])
            position = len(prompts[0])
            adapted = run.forward([Work(0, position, [5], True, sets[0])])[0]
            base = run.forward([Work(0, position, [5], True)])[0]
            effects.append(adapted - base)
        cosine = torch.nn.functional.cosine_similarity(effects[0], effects[1], dim=0)
        assert float(effects[1].norm()) > 1.0  # the adapter matters
        assert float(cosine) > 0.95
        assert float((effects[0] - effects[1]).norm() / effects[1].norm()) < 0.3
        alone = int8.forward([Work(0, position, [5], True, sets[0])])[0]
        beside = int8.forward([Work(s, len(prompts[s]), [5], True, sets[s]) for s in range(4)])
    assert torch.equal(alone, beside[0])
    assert not torch.equal(beside[0], beside[2])


def test_integer_matmuls_quantize_each_row_on_its_own(tmp_path):
    """`quantize_rows` + `MatMulIntegerToFloat` on a toy graph: close to the float
    product, an all-zero row gives zeros (not NaN), and a row's result is the same
    whatever the other rows hold."""
    import numpy as np
    import onnxruntime as ort
    from gateway_onnx.graph import _Graph, quantize_columns, quantize_rows
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(64, 24)).astype(np.float32)
    g = _Graph()
    g.constant("inv127", np.array(1 / 127, np.float32))
    g.constant("one", np.array(1.0, np.float32))
    g.constant("last_axis", np.array([-1], np.int64))
    codes, scale = quantize_rows(g, "x", 64, "zero")
    w_codes, w_scale = quantize_columns(matrix)
    g.node(
        "MatMulIntegerToFloat",
        [codes, g.constant("w", w_codes), "one", g.constant("w_scale", w_scale), "zp"],
        ["unscaled"],
        domain="com.microsoft",
    )
    g.node("Mul", ["unscaled", scale], ["y"])
    g.constant("zp", np.array(128, np.uint8))
    graph = helper.make_graph(
        g.nodes,
        "toy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 64]),
            helper.make_tensor_value_info("zero", TensorProto.UINT8, ["rows", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 24])],
        g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        zero = np.full((len(x), 1), 128, np.uint8)
        return session.run(None, {"x": x, "zero": zero})[0]

    x = rng.normal(size=(5, 64)).astype(np.float32)
    x[1] *= 100  # a row far larger than the others
    x[3] = 0
    y = run(x)
    exact = x @ matrix
    for row in (0, 1, 2, 4):
        error = np.abs(y[row] - exact[row]).max() / np.abs(exact[row]).max()
        assert error < 0.03
    assert np.array_equal(y[3], np.zeros(24, np.float32))
    for row in range(5):
        assert np.array_equal(run(x[row : row + 1])[0], y[row])


def test_a_new_export_replaces_the_same_variants_outdated_ones(tmp_path):
    from gateway_onnx.export import cached_export

    def folder(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "model.onnx").write_text("old")
        return path

    outdated = folder("w-int8-b64-0123456789ab")
    (tmp_path / "w-int8-b64-0123456789ab.lock").touch()
    kept = [
        folder("w-int8-b64-lora-0123456789ab"),
        folder("w-int8-b64-i.out-0123456789ab"),
        folder("v-int8-b64-0123456789ab"),
    ]
    model = cached_export(tmp_path / "w-int8-b64-ba9876543210", lambda p: p.write_text("new"))
    assert model.read_text() == "new"
    assert not outdated.exists()
    assert not (tmp_path / "w-int8-b64-0123456789ab.lock").exists()
    assert all(path.is_dir() for path in kept)
