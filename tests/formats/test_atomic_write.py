"""formats.atomic_write: temporary names, stale temporaries, the folder rule, modes and a full disk."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qconv.formats import atomic_write
from qconv.formats.atomic_write import AtomicFile, AtomicFolder, check_output_file, check_output_folder
from qconv.formats.errors import FormatError


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_temp_is_hidden_beside_the_target_and_carries_the_pid(tmp_path):
    target = tmp_path / "model.gguf"
    with AtomicFile(target) as tmp:
        assert tmp == tmp_path / f".model.gguf.{os.getpid()}.part"
        assert tmp.exists() and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("conversion failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path, live_pid):
    target = tmp_path / "model.gguf"
    dead_file = tmp_path / f".model.gguf.{dead_pid()}.part"
    dead_folder = tmp_path / f".model.gguf.{dead_pid()}.part"
    live = tmp_path / f".model.gguf.{live_pid}.part"
    other_output = tmp_path / f".other.gguf.{dead_pid()}.part"
    dead_file.write_bytes(b"x" * 100)
    dead_folder.mkdir()
    (dead_folder / "model.onnx").write_bytes(b"x")
    live.write_bytes(b"being written")
    other_output.write_bytes(b"x")
    with AtomicFile(target) as tmp:
        tmp.write_bytes(b"new")
    assert not dead_file.exists() and not dead_folder.exists()
    assert live.read_bytes() == b"being written"
    assert other_output.exists()  # only temporaries of the same output are touched


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_and_folders_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with AtomicFile(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
        with AtomicFolder(tmp_path / "d") as folder:
            (folder / "a").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_output_file_checks(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    cases = {
        tmp_path / "folder": "is a folder",
        tmp_path / "missing" / "out.gguf": "does not exist",
        tmp_path / "file" / "out.gguf": "is not a folder",
        tmp_path / "fifo": "not a regular file",
    }
    for path, message in cases.items():
        with pytest.raises(FormatError, match=message) as info:
            check_output_file(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unwritable_folder_is_found_before_the_work(tmp_path):
    """A folder nobody may write into: a read-only one for ordinary users, /proc for root (root ignores modes)."""
    locked = Path("/proc") if os.geteuid() == 0 else tmp_path / "locked"
    if locked != Path("/proc"):
        locked.mkdir()
        locked.chmod(0o555)
    try:
        with pytest.raises(FormatError, match="cannot write"):
            check_output_file(locked / "out.gguf")
    finally:
        if locked != Path("/proc"):
            locked.chmod(0o755)


def test_folder_rule(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FormatError, match="not written by qconv.*--force"):
        check_output_folder(foreign)
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FormatError, match="not a folder"):
        check_output_folder(tmp_path / "file")

    ours = tmp_path / "ours"
    with AtomicFolder(ours) as folder:
        (folder / "model.onnx").write_text("first")
    assert (ours / atomic_write.MARKER).is_file()
    with AtomicFolder(ours) as folder:  # an earlier qconv output is replaced
        (folder / "model.onnx").write_text("second")
    assert (ours / "model.onnx").read_text() == "second"
    with AtomicFolder(foreign, force=True) as folder:
        (folder / "model.onnx").write_text("forced")
    assert sorted(p.name for p in foreign.iterdir()) == [atomic_write.MARKER, "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "foreign", "ours"]


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    ours = tmp_path / "ours"
    with AtomicFolder(ours) as folder:
        (folder / "model.onnx").write_text("first")
    with pytest.raises(KeyboardInterrupt):
        with AtomicFolder(ours) as folder:
            (folder / "model.onnx").write_text("half")
            raise KeyboardInterrupt
    assert (ours / "model.onnx").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]


FULL_DISK_SCRIPT = """
import resource, signal, sys
import numpy as np
from qconv.formats.atomic_write import AtomicFile
from qconv.formats.errors import FormatError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as one on a full disk does
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    with AtomicFile(sys.argv[1]) as tmp:
        {write}
except FormatError as e:
    print(e)
"""


@pytest.mark.parametrize(
    "write",
    [
        "open(tmp, 'wb').write(b'x' * 200000)",  # Python's writes: OSError with errno
        "np.zeros(100000, np.float32).tofile(str(tmp))",  # numpy's: 'N requested and M written', no errno
    ],
)
def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(tmp_path, write):
    target = tmp_path / "out.gguf"
    script = textwrap.dedent(FULL_DISK_SCRIPT).format(write=write)
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{target}: cannot write") and "disk full" in lines[0]
    assert list(tmp_path.iterdir()) == []
