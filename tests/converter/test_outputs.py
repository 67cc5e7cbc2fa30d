"""The output rule of every qconv command that writes: outputs checked before the work, files and folders qconv
wrote replaced atomically, foreign folders refused unless --force, nothing left behind on SIGTERM or a full disk."""

import os
import signal
import subprocess
import sys
import time

import pytest

from qconv.formats.atomic_write import MARKER
from tests.qconv_cli import assert_user_error, run

SHAPE = dict(arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512)


@pytest.fixture
def model(random_model_factory):
    return random_model_factory(dtype="f32", **SHAPE)


# each command's arguments around its output path: commands that took minutes of work before failing
COMMANDS = {
    "to-gguf": lambda m, out: ["to-gguf", m, "-o", out, "--type", "q8_0"],
    "to-gguf --calibrate": lambda m, out: ["to-gguf", m, "-o", out, "--type", "q4_k_m", "--calibrate", "builtin"],
    "to-onnx": lambda m, out: ["to-onnx", m, "-o", out],
    "calibrate": lambda m, out: ["calibrate", m, "-o", out],
    "analyze": lambda m, out: ["analyze", m, "-o", out],
    "eval": lambda m, out: ["eval", m, "--ref", m, "-o", out],
    "sample random": lambda m, out: ["sample", "random", "-o", out],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("problem", ["no such folder", "parent is a file"])
def test_unwritable_outputs_fail_before_the_work(model, tmp_path, command, problem):
    (tmp_path / "file").write_text("x")
    parent = tmp_path / ("missing" if problem == "no such folder" else "file")
    out = parent / "out"
    run(*COMMANDS[command](model, out))  # the first run imports the command's modules: time the second
    start = time.perf_counter()
    code, output = run(*COMMANDS[command](model, out))
    seconds = time.perf_counter() - start
    assert_user_error(code, output, None, out, parent)
    assert seconds < 1.0, f"{command} took {seconds:.1f} s to refuse its output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("command", ["to-gguf", "calibrate", "analyze"])
def test_a_folder_where_a_file_is_expected(model, tmp_path, command):
    (tmp_path / "out").mkdir()
    assert_user_error(*run(*COMMANDS[command](model, tmp_path / "out")), None, tmp_path / "out", "is a folder")


@pytest.mark.parametrize("command", ["to-onnx", "eval", "sample random"])
def test_a_foreign_folder_is_refused_without_force(model, tmp_path, command):
    out = tmp_path / "work"
    out.mkdir()
    (out / "notes.txt").write_text("someone's work")
    assert_user_error(*run(*COMMANDS[command](model, out)), None, out, "--force")
    assert (out / "notes.txt").read_text() == "someone's work"


def test_sample_replaces_its_own_folder_and_a_forced_one(tmp_path):
    out = tmp_path / "m"
    code, output = run("sample", "random", "-o", out, "--layers", "1")
    assert code == 0, output
    assert (out / MARKER).is_file()
    (out / "leftover.txt").write_text("from the first build")
    code, output = run("sample", "random", "-o", out, "--layers", "2")  # an earlier qconv output: replaced whole
    assert code == 0, output
    assert not (out / "leftover.txt").exists() and '"num_hidden_layers": 2' in (out / "config.json").read_text()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    code, output = run("sample", "random", "-o", foreign, "--force")
    assert code == 0, output
    assert not (foreign / "notes.txt").exists() and (foreign / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "m"]


def test_to_onnx_replaces_its_own_folder(model, tmp_path):
    out = tmp_path / "onnx"
    for _ in range(2):
        code, output = run("to-onnx", model, "-o", out, "--no-calibrate", "-q")
        assert code == 0, output
    assert (out / "model.onnx").is_file() and (out / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


@pytest.mark.parametrize(
    "command",
    [["to-gguf"], ["to-onnx"], ["calibrate"], ["analyze"], ["eval"], ["sample", "random"], ["sample", "smollm2"]],
)
def test_help_states_the_output_rule(command):
    code, output = run(*command, "--help")
    assert code == 0
    text = " ".join(output.split())
    assert "replaced only once the new one is complete" in text, output
    if command[0] in ("to-onnx", "eval", "sample"):
        assert "refused unless --force" in text and "--force" in text, output


def test_eval_unknown_suite_lists_the_suites_before_loading(tmp_path):
    code, output = run("eval", tmp_path / "not-there.gguf", "--ref", tmp_path / "neither", "--suite", "typo")
    assert_user_error(code, output, None, "--suite typo", "prose", "maths", "long_context")


@pytest.mark.parametrize("flag", ["--target-bpw", "--max-kld"])
def test_auto_flags_without_type_auto_are_an_error(model, tmp_path, flag):
    out = tmp_path / "out.gguf"
    code, output = run("to-gguf", model, "-o", out, "--type", "q4_k_m", flag, "0.5")
    assert_user_error(code, output, None, flag, "--type auto")
    assert not out.exists()


@pytest.mark.parametrize("flags", [[], ["--target-bpw", "4", "--max-kld", "0.1"]])
def test_type_auto_needs_exactly_one_target_before_the_analysis(model, tmp_path, flags):
    code, output = run("to-gguf", model, "-o", tmp_path / "out.gguf", "--type", "auto", *flags)
    assert_user_error(code, output, None, "--target-bpw", "--max-kld")


def test_a_crashed_writers_temporaries_are_removed_a_live_ones_kept(model, tmp_path):
    """Each SIGKILLed or crashed run left a hidden .part file (56-59 MB for the sample model) for good."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale, alive = tmp_path / f".out.gguf.{dead.pid}.part", tmp_path / f".out.gguf.{live.pid}.part"
        stale.write_bytes(b"half a model")
        alive.write_bytes(b"being written")
        code, output = run("to-gguf", model, "-o", tmp_path / "out.gguf", "--type", "q8_0", "-q")
        assert code == 0, output
        assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "out.gguf"]
    finally:
        live.kill()
        live.wait()


def test_imatrix_and_gguf_get_the_usual_mode(model, tmp_path):
    """An imatrix was written 0600 (mkstemp) while GGUFs were 0644."""
    from qconv.formats.imatrix import ImportanceMatrix, write_imatrix

    old = os.umask(0o022)
    try:
        imatrix = write_imatrix(tmp_path / "imatrix.gguf", ImportanceMatrix({"a": [1.0]}, {"a": 1.0}, ["t"], 1, 1))
        code, output = run("to-gguf", model, "-o", tmp_path / "m.gguf", "--type", "q8_0", "-q")
        assert code == 0, output
    finally:
        os.umask(old)
    assert imatrix.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "m.gguf").stat().st_mode & 0o777 == 0o644


def qconv_process(*args, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "qconv.converter.cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigterm_removes_the_temporary_file_and_keeps_the_old_output(tmp_path):
    """SIGTERM killed to-gguf at once and left a hidden .part file (one more per run)."""
    from qconv.samples.synthetic import build_random_model

    big = build_random_model(tmp_path / "big", hidden=1024, n_layers=4, n_heads=8, n_kv_heads=4, ffn=2816, dtype="f32")
    out = tmp_path / "out.gguf"
    out.write_bytes(b"the previous model")
    proc = qconv_process("to-gguf", big, "-o", out, "--type", "q4_k_m", "-t", "1", "-q")
    temp = tmp_path / f".out.gguf.{proc.pid}.part"
    deadline = time.monotonic() + 60
    while not temp.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert temp.exists(), "the conversion never started writing"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "qconv: terminated"
    assert out.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "out.gguf"]


def _limit_file_size():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit writes fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.parametrize("type_name", ["f32", "q8_0"])
def test_a_full_disk_is_one_line_and_leaves_nothing(model, tmp_path, type_name):
    """`OSError: ... requested and ... written` was a traceback, and the .part file stayed."""
    out = tmp_path / "out.gguf"
    proc = qconv_process("to-gguf", model, "-o", out, "--type", type_name, "-q", preexec_fn=_limit_file_size)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qconv: error: {out}: cannot write") and "disk full" in lines[0]
    assert list(tmp_path.iterdir()) == []
