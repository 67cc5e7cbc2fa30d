"""The native tokenizer against llama.cpp (llama-cpp-python): ids, pieces and detokenized text must be equal.

Vocabularies: the SmolLM2 GGUF (byte-level BPE, pre=smollm), the gemma3-270m GGUF (SentencePiece, 262k), and the
SmolLM2 vocabulary re-labelled with every other pre-tokenizer we support (llama-bpe, qwen2, default, gpt-2,
starcoder): a vocabulary-only GGUF with the same merges, so llama.cpp and we split the same text with each
pre-tokenizer's regexes. Texts: tests/data/tokenizer_strings.json plus seeded random strings mixing scripts,
special-token text and malformed UTF-8.
"""

from __future__ import annotations

import ctypes
import json
import random
import shutil
import struct
import time
from pathlib import Path

import pytest

from qconv.runtime.tokenizer import Tokenizer
from tests.conftest import requires_llama_cpp
from tests.llama_ref import quiet_stderr

pytestmark = [pytest.mark.reference, requires_llama_cpp]

DATA = Path(__file__).parent.parent / "data"
STRINGS = json.loads((DATA / "tokenizer_strings.json").read_text())
OTHER_PRE = ["llama-bpe", "qwen2", "default", "gpt-2", "starcoder"]


def random_texts(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    alphabet = list("aAbZ09 '\n\r\t.,!?-_<>|/\\\"$+=^~") + [
        "é", "ß", "中", "😀", "\u00a0", "\u3000", "٣", "Ⅻ", "\u0301", "\u200b", "\u2581", "<|im_start|>",
        "<|im_end|>", "<eos>", "<start_of_turn>", "  ", "\n\n", "'s", "'LL", "Ġ", "\x00", "<0x41>", "<unused5>",
        "12345", "１２",
    ]  # fmt: skip
    malformed = [b"\xff", b"\xc3", b"\xe2\x82", b"\x80", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf"]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 30)):
            roll = rng.random()
            if roll < 0.07:
                parts.append(rng.choice(malformed))
            elif roll < 0.17:
                parts.append(chr(rng.randint(0x80, 0x2FFFF)).encode("utf-8", "surrogatepass"))
            else:
                parts.append(rng.choice(alphabet).encode())
        texts.append(b"".join(parts))
    return texts


RANDOM_TEXTS = random_texts(400)


def write_vocab_only(source: Path, target: Path, overrides: dict) -> Path:
    """A copy of a trusted sample GGUF's metadata (no tensors) with some values replaced."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(source)
    writer = GGUFWriter(str(target), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = overrides[key] if key in overrides else field.contents()
        sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


@pytest.fixture(scope="module")
def vocab_files(smollm2_package_gguf, tmp_path_factory) -> dict[str, Path]:
    from qconv.samples.gemma3 import gemma3_gguf_path

    files = {"smollm": Path(smollm2_package_gguf), "gemma3": gemma3_gguf_path()}
    folder = tmp_path_factory.mktemp("pre")
    for pre in OTHER_PRE:
        files[f"smollm-as-{pre}"] = write_vocab_only(
            files["smollm"], folder / f"{pre}.gguf", {"tokenizer.ggml.pre": pre}
        )
    # SentencePiece with the space prefix (llama-2 style; gemma3 turns it off)
    target = folder / "gemma3-prefix.gguf"
    shutil.copyfile(files["gemma3"], target)
    files["gemma3-space-prefix"] = set_bool_in_place(target, "tokenizer.ggml.add_space_prefix", True)
    return files


def replace_string(source: Path, target: Path, key: str, value: str) -> Path:
    """Copy a tensor-less GGUF with one string value replaced (the file may change length: nothing follows)."""
    data = source.read_bytes()
    encoded = key.encode()
    needle = struct.pack("<Q", len(encoded)) + encoded + struct.pack("<I", 8)  # GGUF value type 8: string
    at = data.find(needle)
    assert at > 0 and data.find(needle, at + 1) < 0, f"{source}: no single string {key}"
    start = at + len(needle)
    (old_len,) = struct.unpack_from("<Q", data, start)
    new = value.encode()
    target.write_bytes(data[:start] + struct.pack("<Q", len(new)) + new + data[start + 8 + old_len :])
    return target


def set_bool_in_place(path: Path, key: str, value: bool) -> Path:
    """Flip a bool metadata value of a trusted GGUF in place (rewriting 262k tokens with gguf-py takes a minute)."""
    encoded = key.encode()
    needle = struct.pack("<Q", len(encoded)) + encoded + struct.pack("<I", 7)  # GGUF value type 7: bool
    with open(path, "r+b") as file:
        head = file.read(16 << 20)
        at = head.find(needle)
        assert at > 0 and head.find(needle, at + 1) < 0, f"{path}: no single bool {key}"
        file.seek(at + len(needle))
        file.write(bytes([value]))
    return path


@pytest.fixture(scope="module")
def load_both():
    """path -> (our Tokenizer, llama_cpp.Llama vocab-only), each loaded once; closed before interpreter exit."""
    import llama_cpp

    loaded: dict[Path, tuple] = {}

    def load(path: Path):
        if path not in loaded:
            with quiet_stderr():
                reference = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
            loaded[path] = (Tokenizer.from_gguf(path), reference)
        return loaded[path]

    yield load
    for _, reference in loaded.values():
        reference.close()


def reference_ids(reference, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
    with quiet_stderr():
        return reference.tokenize(text, add_bos=add_special, special=parse_special)


@pytest.mark.parametrize(
    "name", ["smollm", "gemma3", "gemma3-space-prefix", *[f"smollm-as-{pre}" for pre in OTHER_PRE]]
)
@pytest.mark.parametrize("parse_special", [True, False])
def test_ids_equal_llama_cpp(vocab_files, load_both, name, parse_special):
    ours, reference = load_both(vocab_files[name])
    texts = [s.encode() for s in STRINGS] + RANDOM_TEXTS
    mismatches = []
    for text in texts:
        got = ours.encode(text, add_special=False, parse_special=parse_special)
        want = reference_ids(reference, text, False, parse_special)
        if got != want:
            mismatches.append((text, got, want))
    print(f"{name} parse_special={parse_special}: {len(texts) - len(mismatches)}/{len(texts)} equal to llama.cpp")
    assert mismatches[:5] == []


@pytest.mark.parametrize("name", ["smollm", "gemma3", "gemma3-space-prefix"])
def test_add_special_equals_llama_cpp(vocab_files, load_both, name):
    ours, reference = load_both(vocab_files[name])
    for text in STRINGS[:80]:
        assert ours.encode(text, True, True) == reference_ids(reference, text.encode(), True, True), text


def _reference_piece(vocab, token: int, special: bool) -> bytes:
    import llama_cpp

    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[:n]


def _reference_detokenize(vocab, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
    import llama_cpp

    tokens = (llama_cpp.llama_token * len(ids))(*ids)
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_detokenize(vocab, tokens, len(ids), buf, len(buf), remove_special, unparse_special)
    return buf.raw[:n]


@pytest.mark.parametrize("name", ["smollm", "gemma3"])
def test_every_piece_equals_llama_cpp(vocab_files, load_both, name):
    ours, reference = load_both(vocab_files[name])
    vocab = reference._model.vocab
    for special in (True, False):
        wrong = [
            t for t in range(ours.n_vocab) if ours.token_to_piece(t, special) != _reference_piece(vocab, t, special)
        ]
        assert wrong[:5] == [], f"special={special}"


@pytest.mark.parametrize("name", ["smollm", "gemma3", "gemma3-space-prefix"])
def test_detokenize_equals_llama_cpp(vocab_files, load_both, name):
    ours, reference = load_both(vocab_files[name])
    vocab = reference._model.vocab
    for text in STRINGS:
        ids = ours.encode(text, add_special=True, parse_special=True)
        for remove_special in (True, False):
            for unparse_special in (True, False):
                got = ours.decode_bytes(ids, remove_special, unparse_special)
                assert got == _reference_detokenize(vocab, ids, remove_special, unparse_special), text


@pytest.mark.parametrize("name", ["smollm", "gemma3"])
def test_speed_against_llama_cpp(vocab_files, load_both, name):
    ours, reference = load_both(vocab_files[name])
    # llama.cpp scans the text once per special token: gemma3's 6414 of them take it ~2 minutes per megabyte
    size = 1_000_000 if name == "smollm" else 50_000
    block = "\n".join(STRINGS).encode()
    text = (block * (size // len(block) + 1))[:size]
    start = time.perf_counter()
    got = ours.encode(text, add_special=False, parse_special=True)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    want = reference_ids(reference, text, False, True)
    reference_s = time.perf_counter() - start
    print(
        f"{name}: {size} bytes qrt {ours_s:.3f} s, llama.cpp {reference_s:.3f} s, llama.cpp/qrt {reference_s / ours_s:.1f}x"
    )
    assert got == want
