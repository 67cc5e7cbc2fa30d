"""A file truncated while memory-mapped: one line and exit 1 instead of death by SIGBUS (qrun, qconv to-gguf,
qrun-native), with the temporary output removed; a SIGBUS that is no file's still crashes."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.native.test_loader import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def run_python(script: str, *args, cwd=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd or ROOT)


def assert_truncation_message(proc, program: str, path: Path) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.splitlines() == [f"{program}: error: {path} changed while being read (truncated?)"], proc.stderr


def test_model_truncated_while_mapped(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", n_layers=4)
    proc = run_python(
        """
        import os, sys
        from qconv.runtime.model import Model
        model = Model(sys.argv[1], threads=1, ctx=64)
        os.truncate(sys.argv[1], 4096)
        model.logits([2, 3, 4])
        print("read a truncated file")
        """,
        path,
    )
    assert_truncation_message(proc, "qrun", path)


def test_to_gguf_input_truncated_while_converting(random_model_factory, tmp_path):
    """The input shrinks after its first tensor was read from the mapping (the output's temporary file exists by
    then): the message names the input and the temporary file is removed."""
    model = tmp_path / "model"
    shutil.copytree(random_model_factory(dtype="f32", arch="llama", hidden=256, n_layers=2, ffn=512, vocab=512), model)
    out = tmp_path / "out.gguf"
    proc = run_python(
        """
        import os, sys
        from qconv.converter.cli import main
        from qconv.formats.safetensors_stream import SafetensorsSource
        shard = sys.argv[1] + "/model.safetensors"
        read_f32 = SafetensorsSource.read_f32

        def read_then_truncate(self, *args, **kwargs):
            rows = read_f32(self, *args, **kwargs)
            if os.path.getsize(shard) > 4096:
                os.truncate(shard, 4096)
            return rows

        SafetensorsSource.read_f32 = read_then_truncate
        main(["to-gguf", sys.argv[1], "-o", sys.argv[2], "--type", "q8_0", "-q"])
        """,
        model,
        out,
    )
    assert_truncation_message(proc, "qconv", model / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_sigbus_that_is_no_file_still_crashes(tmp_path):
    proc = run_python(
        """
        import os, signal
        from qconv.runtime import mapped_file_guard
        mapped_file_guard.install("qrun")
        os.kill(os.getpid(), signal.SIGBUS)
        """
    )
    assert proc.returncode == -signal.SIGBUS or "Bus error" in proc.stderr, (proc.returncode, proc.stderr)
    assert "changed while being read" not in proc.stderr


def test_qrun_native_model_truncated_while_generating(qrun_native, tmp_path):
    """Stopped once generation has begun, the model file truncated, continued: the next token reads the weights."""
    path = write_tiny_model(tmp_path / "m.gguf", n_layers=4, context=4096)
    command = [qrun_native, path, "--raw", "-p", "ab", "-n", "4000", "--ignore-eos", "-c", "4096", "-t", "1"]
    proc = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(1), "qrun-native generated nothing"
        proc.send_signal(signal.SIGSTOP)
        os.truncate(path, 4096)
        time.sleep(0.05)
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, (proc.returncode, stderr)
    assert stderr.decode().splitlines() == [f"qrun-native: error: {path} changed while being read (truncated?)"]
