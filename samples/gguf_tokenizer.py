"""Read the tokenizer.* values of a trusted GGUF (a sample package's own file) into TokenizerMeta (the same record the converter writes).

gguf-py's reader is only pointed at files shipped by the sample packages, never at user files.
"""

from __future__ import annotations

from gguf import GGUFReader

from qconv.formats.tokenizer_meta import TokenizerMeta


def _value(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_tokenizer_fields(reader: GGUFReader) -> TokenizerMeta:
    return TokenizerMeta(
        model=_value(reader, "tokenizer.ggml.model"),
        pre=_value(reader, "tokenizer.ggml.pre"),
        tokens=list(_value(reader, "tokenizer.ggml.tokens")),
        token_types=[int(t) for t in _value(reader, "tokenizer.ggml.token_type")],
        merges=_value(reader, "tokenizer.ggml.merges"),
        scores=_value(reader, "tokenizer.ggml.scores"),
        bos_id=_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_value(reader, "tokenizer.ggml.eos_token_id"),
        unk_id=_value(reader, "tokenizer.ggml.unknown_token_id"),
        pad_id=_value(reader, "tokenizer.ggml.padding_token_id"),
        add_bos=_value(reader, "tokenizer.ggml.add_bos_token"),
        add_eos=_value(reader, "tokenizer.ggml.add_eos_token"),
        add_space_prefix=_value(reader, "tokenizer.ggml.add_space_prefix"),
        chat_template=_value(reader, "tokenizer.chat_template"),
    )
