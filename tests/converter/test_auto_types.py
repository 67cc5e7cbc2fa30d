"""to-gguf --type auto's inputs: a saved analysis (--sensitivity) reused and checked against the model, a
--target-bpw the candidate types cannot reach refused from the shapes alone, and --max-kld measured on the user's
text and task prompts (--eval-text, --eval-tasks) instead of predicted. On a small random model (seconds each)."""

from __future__ import annotations

import json
import random
import re

import gguf
import pytest
from click.testing import CliRunner

from qconv.converter import analyze as an
from qconv.converter.auto_types import check_auto_inputs, model_shapes, reachable_bpw
from qconv.converter.cli import main
from qconv.formats.errors import FormatError
from tests.conftest import have

pytestmark = pytest.mark.skipif(not have("qconv.runtime.model"), reason="the runtime's Model is not built yet")
SHAPE = dict(arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512)
WORDS = "the river runs past the old mill and people in the valley talk about rain and the harvest".split()


def qconv(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    """The error a command stopped with: exit 1, one line on stderr, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qconv: error: "), result.stderr
    return lines[0]


def metadata(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key in ("qconv.auto.measured_kld", "qconv.auto.measured_on", "qconv.auto.bits_per_weight"):
        field = reader.fields[key]
        out[key] = bytes(field.parts[-1]).decode() if key.endswith("_on") else float(field.parts[-1][0])
    return out


@pytest.fixture()
def no_long_work(monkeypatch):
    """The analysis and the f32 conversion raise: what must come before them is checked before them."""

    def refuse(*args, **kwargs):
        raise AssertionError("reached the long work")

    monkeypatch.setattr(an, "analyze", refuse)
    monkeypatch.setattr("qconv.converter.calibrate.model_gguf", refuse)


@pytest.fixture(scope="module")
def folder(random_model_factory):
    return random_model_factory(**SHAPE)


@pytest.fixture(scope="module")
def sensitivity(folder, tmp_path_factory):
    """`qconv analyze -o` with the options to-gguf --type auto analyses with (1024 tokens per trial)."""
    out = tmp_path_factory.mktemp("sens") / "sens.json"
    result = qconv("analyze", folder, "-o", out, "--max-tokens", 1024, "-t", 2, "-q")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    words = random.Random(0).choices(WORDS, k=400)  # about 500 tokens: four windows of 128
    path = tmp_path_factory.mktemp("text") / "notes.txt"
    path.write_text(" ".join(words) + "\n")
    return path


# ---------------------------------------------------------------- --sensitivity


def test_sensitivity_reuse_gives_the_same_file_without_analysing(folder, sensitivity, tmp_path, monkeypatch):
    fresh, reused = tmp_path / "fresh.gguf", tmp_path / "reused.gguf"
    result = qconv("to-gguf", folder, "-o", fresh, "--type", "auto", "--target-bpw", 5.0, "-t", 2, "-q")
    assert result.exit_code == 0, result.output

    def refuse(*args, **kwargs):
        raise AssertionError("analysed again")

    monkeypatch.setattr(an, "analyze", refuse)
    result = qconv("to-gguf", folder, "-o", reused, "--type", "auto", "--target-bpw", 5.0, "--sensitivity",
                   sensitivity, "-t", 2, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert reused.read_bytes() == fresh.read_bytes()
    assert "measured on the built-in held-out text" in result.stdout


@pytest.fixture(scope="module")
def other_json(random_model_factory, tmp_path_factory):
    """The analysis of another model: the same family and layers, a wider FFN."""
    other = random_model_factory(**(SHAPE | dict(ffn=768)))
    path = tmp_path_factory.mktemp("other") / "other.json"
    path.write_text(json.dumps(an.analyze(other, an.AnalyzeOptions(kld=False, threads=2))))
    return path


def test_another_models_sensitivity_is_refused_before_conversion(folder, other_json, tmp_path, no_long_work):
    analysis = json.loads(other_json.read_text())
    ours = model_shapes(folder)
    first = next(n for n in ours if n in analysis["tensors"] and list(ours[n]) != analysis["tensors"][n]["shape"])
    out = tmp_path / "auto.gguf"
    result = qconv("to-gguf", folder, "-o", out, "--type", "auto", "--target-bpw", 5.0, "--sensitivity", other_json)
    line = one_line_error(result)
    assert f"other.json: tensor {first} has shape {analysis['tensors'][first]['shape']}, " in line
    assert "(the analysis is of " in line
    assert not out.exists()


def mutated(sensitivity, tmp_path, change) -> str:
    analysis = json.loads(sensitivity.read_text())
    change(analysis)
    path = tmp_path / "sens.json"
    path.write_text(json.dumps(analysis))
    return str(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("tensors"), r"'tensors' is missing"),
        (lambda a: a["types"].append("q9_k"), r"unknown candidate type 'q9_k'"),
        (lambda a: a["tensors"].pop("blk.1.attn_v.weight"), r"no tensor blk\.1\.attn_v\.weight, which .* has"),
        (
            lambda a: a["tensors"].__setitem__("blk.7.attn_q.weight", a["tensors"]["blk.0.attn_q.weight"]),
            r"tensor blk\.7\.attn_q\.weight is not a tensor of",
        ),
        (
            lambda a: a["tensors"]["output.weight"]["options"]["q4_k"].__setitem__("bytes", 1),
            r"tensor output\.weight: option q4_k has 1 bytes, expected \d+",
        ),
        (
            lambda a: a["tensors"].__setitem__("blk.0.ffn_up.weight", [512, 256]),
            r"tensor blk\.0\.ffn_up\.weight: expected an object",
        ),
        (lambda a: a["groups"][0].__setitem__("kld", "high"), r"group .*: 'kld' is 'high'"),
        (lambda a: a.__setitem__("fixed_bytes", 3), r"'fixed_bytes' is 3, .* has \d+"),
    ],
)
def test_a_broken_sensitivity_names_what_differs(folder, sensitivity, tmp_path, change, message):
    path = mutated(sensitivity, tmp_path, change)
    with pytest.raises(FormatError, match=message) as caught:
        check_auto_inputs(folder, 5.0, sensitivity=path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_a_sensitivity_that_is_not_json(folder, tmp_path):
    path = tmp_path / "sens.json"
    path.write_text("{ not json")
    with pytest.raises(FormatError, match=r"sens\.json: not JSON"):
        check_auto_inputs(folder, 5.0, sensitivity=path)
    path.write_text("[]")
    with pytest.raises(FormatError, match=r"sens\.json: not a JSON object"):
        check_auto_inputs(folder, 5.0, sensitivity=path)


# ---------------------------------------------------------------- --target-bpw


def test_reachable_range_is_what_the_analysis_measures(folder, sensitivity):
    """From shapes alone, the same options (after the row fallback) analyze.tensor_errors measures."""
    analysis = json.loads(sensitivity.read_text())
    sizes = [[o["bytes"] for o in e["options"].values()] for e in analysis["tensors"].values()]
    n, fixed = analysis["n_elements"], analysis["fixed_bytes"]
    low, high = reachable_bpw(model_shapes(folder), an.DEFAULT_TYPES)
    assert low == pytest.approx(8 * (fixed + sum(min(s) for s in sizes)) / n, rel=1e-12)
    assert high == pytest.approx(8 * (fixed + sum(max(s) for s in sizes)) / n, rel=1e-12)


@pytest.mark.parametrize("target", [1.0, 9.0, float("nan")])
def test_an_unreachable_target_is_refused_before_analysis(folder, tmp_path, no_long_work, target):
    low, high = reachable_bpw(model_shapes(folder), an.DEFAULT_TYPES)
    result = qconv("to-gguf", folder, "-o", tmp_path / "a.gguf", "--type", "auto", "--target-bpw", target)
    line = one_line_error(result)
    found = re.search(r"--target-bpw \S+: this model's tensors reach (\d+\.\d+)\.\.(\d+\.\d+) bits per weight", line)
    assert found, line
    assert low <= float(found[1]) < low + 1e-3 and high - 1e-3 < float(found[2]) <= high


def test_the_row_fallback_bounds_the_range(tmp_path):
    """A 576-wide row cannot take the 256-blocks: the smallest reachable is above q2_k's 2.625 bits."""
    shapes = {"blk.0.ffn_down.weight": (64, 576)}
    low, high = reachable_bpw(shapes, ["q2_k", "q8_0"])
    assert low == pytest.approx(4.5)  # q2_k falls back to q4_0 (plan.fit_row)
    assert high == pytest.approx(8.5)


# ---------------------------------------------------------------- --eval-text, --eval-tasks


def test_max_kld_is_measured_on_the_users_text(folder, sensitivity, text_file, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"capability": "rivers", "prompt": "Tell me about the river and the mill", "expected": "river"})
        + "\n"
        + json.dumps({"capability": "rain", "prompt": "Will it rain at the harvest?", "expected": "yes"})
        + "\n"
    )
    # the bound: what pure q4_0 loses on the text, measured by qconv eval
    q4_0 = tmp_path / "q4_0.gguf"
    assert qconv("to-gguf", folder, "-o", q4_0, "--type", "q4_0", "--pure", "-q").exit_code == 0

    def eval_kld(path) -> float:
        result = qconv("eval", path, "--ref", folder, "--suite", "none", "--no-tasks", "--text", f"mine={text_file}",
                       "-c", 128, "-t", 2, "-q", "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["candidates"][0]["suites"][0]["kld_mean"]

    bound = round(eval_kld(q4_0), 5)
    out = tmp_path / "auto.gguf"
    result = qconv("to-gguf", folder, "-o", out, "--type", "auto", "--max-kld", bound, "--sensitivity", sensitivity,
                   "--eval-text", text_file, "--eval-tasks", tasks, "--eval-ctx", 128, "-t", 2)  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = metadata(out)
    assert meta["qconv.auto.measured_kld"] <= bound
    assert str(text_file) in meta["qconv.auto.measured_on"] and str(tasks) in meta["qconv.auto.measured_on"]
    assert str(text_file) in result.stdout
    measured_text = eval_kld(out)
    assert measured_text <= bound * (1 + 1e-6)
    # the search found the edge: every cheaper mixture it measured was over the bound
    trials = [(float(b), float(k)) for b, k in re.findall(r"(\d+\.\d+) bits per weight measures KLD (\d+\.\d+)",
                                                          result.stderr)]  # fmt: skip
    chosen = meta["qconv.auto.bits_per_weight"]
    assert len(trials) >= 2 and any(k > bound for _, k in trials)
    assert all(k > bound for b, k in trials if b < chosen - 1e-3)


def test_eval_files_are_checked_before_any_work(folder, text_file, tmp_path, no_long_work):
    out = tmp_path / "a.gguf"
    base = ("to-gguf", folder, "-o", out, "--type", "auto", "--max-kld", 0.01)
    line = one_line_error(qconv(*base, "--eval-text", tmp_path / "missing.txt"))
    assert "missing.txt: cannot read the text file" in line
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"capability": "a", "prompt": "hi", "expected": "x"}\n{"capability": "a", "prompt": \n')
    assert f"{bad}:2: " in one_line_error(qconv(*base, "--eval-tasks", bad))
    assert "--eval-ctx 64 needs --eval-text" in one_line_error(qconv(*base, "--eval-ctx", 64))
    assert "--eval-text" in one_line_error(qconv("to-gguf", folder, "-o", out, "--type", "q8_0", "--eval-text",
                                                 text_file))  # fmt: skip
    assert not out.exists()


def test_a_text_shorter_than_a_window_stops_before_the_analysis(folder, text_file, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("analysed")

    monkeypatch.setattr(an, "analyze", refuse)
    line = one_line_error(qconv("to-gguf", folder, "-o", tmp_path / "a.gguf", "--type", "auto", "--max-kld", 0.01,
                                "--eval-text", text_file, "--eval-ctx", 4096, "-q"))  # fmt: skip
    assert re.search(r"notes\.txt: \d+ tokens, fewer than one window of 4096", line)
