"""runtime.constrained: llguidance's tokenizer built from the GGUF's token table, masks that hold sampling to a JSON
schema, bad schemas as one-line errors, and the issue's acceptance check on the SmolLM2 sample: 50 schemas with
nested objects, arrays, enums, anyOf and $ref, every answer ending with "stop", parsing and validating; and
`qrun --json-schema`."""

from __future__ import annotations

import json
import random
import time

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from qconv.formats.errors import FormatError
from qconv.runtime import cli
from qconv.runtime.constrained import JsonConstraint, ll_tokenizer
from qconv.runtime.generation import TextStream, generate
from qconv.runtime.model import Model
from qconv.runtime.protocol import prefill

N_SCHEMAS = 50
MAX_TOKENS = 400  # far above any answer the schemas below allow a sensible model; "length" would be a failure


@pytest.fixture(scope="module")
def model(smollm2_package_gguf) -> Model:
    return Model(smollm2_package_gguf, threads=2, ctx=1024)


def answer(model, prompt: str, constraint, seed: int = 0, temperature: float = 0.7, max_tokens: int = MAX_TOKENS):
    """(text, finish reason) of one chat answer generated under the constraint."""
    text = model.render_chat([{"role": "user", "content": prompt}])
    ids: list[int] = []
    options = dict(temperature=temperature, seed=seed, constraint=constraint, token_ids=ids)
    answer = "".join(generate(model, text, max_tokens, **options))
    # short of max_tokens, only end of generation or the finished constraint ended it (the context is ample)
    return answer, "stop" if len(ids) < max_tokens or constraint.is_finished() else "length"


# ---- the llguidance tokenizer from the GGUF's token table ----


def test_ll_tokenizer_matches_the_gguf_vocabulary(model):
    tok = model.tokenizer
    ll = ll_tokenizer(tok)
    assert ll is ll_tokenizer(tok)  # built once per Tokenizer
    assert ll.vocab_size == tok.n_vocab
    assert ll.eos_token == tok.eos and set(ll.eos_tokens) == {t for t in range(tok.n_vocab) if tok.is_eog(t)}
    text = 'Hello {"name": "Zoë", "n": [1, 2.5e3]} — ok\n'
    ids = tok.encode(text, add_special=False)
    assert ll.decode_bytes(ids) == tok.decode_bytes(ids) == text.encode()
    im_end = tok.encode("<|im_end|>", add_special=False, parse_special=True)
    assert len(im_end) == 1 and ll.is_special_token(im_end[0])
    # the text "<|im_end|>" is bytes to llguidance, not the control token
    assert im_end[0] not in ll.tokenize_str("<|im_end|>")


# ---- masks ----

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "kind": {"enum": ["cat", "dog"]}},
    "required": ["name", "kind"],
    "additionalProperties": False,
}


def test_mask_allows_the_schema_and_nothing_else(model):
    tok = model.tokenizer
    constraint = JsonConstraint.for_schema(tok, PERSON)
    allowed = np.flatnonzero(constraint.allowed())
    assert len(allowed) > 0 and all(tok.decode([t]).startswith("{") for t in allowed)
    logits = np.zeros(tok.n_vocab + 64, dtype=np.float32)  # a padded output layer: the extra rows never allowed
    masked = constraint.mask(logits)
    assert masked is logits
    assert np.array_equal(np.flatnonzero(np.isfinite(masked)), allowed)
    for token in tok.encode('{"name":"Rex","kind":"dog"', add_special=False):
        assert not constraint.is_finished()
        constraint.accept(token)
    assert not constraint.is_finished()  # the closing brace is still to come
    constraint.accept(tok.encode("}", add_special=False)[0])
    assert constraint.is_finished()
    # complete: only end of generation may follow
    assert set(np.flatnonzero(constraint.allowed())) == {t for t in range(tok.n_vocab) if tok.is_eog(t)}


def test_compact_json_without_free_whitespace(model):
    tok = model.tokenizer
    constraint = JsonConstraint.for_schema(tok, {**PERSON, "x-guidance": {"whitespace_flexible": True}})
    for token in tok.encode('{"name":"Rex"', add_special=False):
        constraint.accept(token)
    assert not any(tok.decode([t]).isspace() for t in np.flatnonzero(constraint.allowed()))
    with pytest.raises(FormatError, match="does not fit the JSON schema"):
        constraint.accept(tok.encode(" ", add_special=False)[0])


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"type": "foo"}, "Invalid type: foo"),
        ({"$ref": "#/$defs/missing"}, "does not exist"),
        ({"type": "string", "pattern": "("}, "regex parse error: ( ^ error: unclosed group"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "Unsatisfiable schema"),
        ({"not": {"type": "string"}}, "Unimplemented keys"),
        ({"type": "array", "uniqueItems": True}, 'Unimplemented keys: ["uniqueItems"]'),  # refused, not ignored
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf constraints are not supported"),
        ({"$ref": "https://example.com/other.json"}, "not present in a registry"),  # never fetched
        ([{"type": "object"}], "expected an object, got list"),
    ],
)
def test_bad_schema_is_a_one_line_error(model, schema, reason):
    with pytest.raises(FormatError) as err:
        JsonConstraint.for_schema(model.tokenizer, schema)
    message = str(err.value)
    assert message.startswith("JSON schema: ") and reason in message and "\n" not in message


# ---- answers ----


def test_stream_ends_with_stop_when_the_json_is_complete(model):
    prompt = model.tokenize(model.render_chat([{"role": "user", "content": "Name a pet, as JSON."}]))
    constraint = JsonConstraint.for_schema(model.tokenizer, PERSON)
    stream = TextStream(model, prompt, MAX_TOKENS, temperature=0.0, constraint=constraint)
    logits = prefill(model, prompt)
    text = ""
    while stream.finished is None:
        text += stream.step(logits)
        if stream.needs_eval:
            logits = model.evaluate([stream.token])
    text += stream.tail()
    assert stream.finished == "stop" and constraint.is_finished()
    assert model.tokenizer.decode(stream.tokens) == text  # no end-of-generation token was sampled after it
    jsonschema.validate(json.loads(text), PERSON)


def test_any_json_object(model):
    constraint = JsonConstraint.for_schema(model.tokenizer, None)
    text, finish = answer(model, "Describe a cat as JSON.", constraint, temperature=0.0)
    assert finish == "stop", text
    assert isinstance(json.loads(text), dict)


TOPICS = [
    "a library book", "a city", "a recipe", "a pet", "a movie", "a laptop", "a planet", "a football team",
    "a hotel booking", "a song", "a car", "a restaurant order", "a museum", "a bird", "a train trip",
    "a birthday party", "a garden", "a video game", "a bank account", "a mountain", "a school class",
    "a weather report", "a shop", "a tree", "a concert",
]  # fmt: skip
WORDS = [
    "red", "green", "blue", "small", "large", "new", "old", "open", "closed", "north", "south", "east", "west",
    "low", "high", "fast", "slow", "basic", "premium", "draft", "done",
]  # fmt: skip
NAMES = ["name", "title", "label", "city", "owner", "note", "author", "place"]


def random_schema(rng: random.Random) -> dict:
    """An object schema with a nested object (two levels), an array, an enum, an anyOf and $ref to $defs, and a
    few random extra fields; every string, array and number bounded (answers stay short: a small model left free
    may write a string or a number's digits for ever)."""

    def text(limit=None):
        return {"type": "string", "maxLength": limit or rng.choice([8, 12, 20])}

    def enum():
        return {"enum": rng.sample(WORDS, rng.randint(2, 5))}

    def integer():
        low = rng.choice([0, 1, 1900])
        return {"type": "integer", "minimum": low, "maximum": low + rng.choice([10, 100, 125])}

    def strict_object(properties: dict, optional: int = 0) -> dict:
        names = list(properties)
        return {
            "type": "object",
            "properties": properties,
            "required": names[: len(names) - optional],
            "additionalProperties": False,
        }

    defs = {"Item": strict_object({rng.choice(NAMES): text(12), "kind": enum()}), "Level": enum()}
    anyof_branches = [{"type": "null"}, integer(), {"$ref": "#/$defs/Item"}, text(10), {"type": "boolean"}]
    fields = {
        rng.choice(NAMES): text(),
        "status": {"$ref": "#/$defs/Level"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "maxItems": rng.randint(1, 2)},
        "extra": {"anyOf": rng.sample(anyof_branches, rng.randint(2, 3))},
        "details": strict_object({"size": enum(), "where": strict_object({rng.choice(NAMES): text(12)})}),
    }
    extras = {
        "count": integer(),
        "tags": {"type": "array", "items": enum(), "minItems": 1, "maxItems": rng.randint(1, 3)},
        "active": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 10, "multipleOf": rng.choice([0.5, 0.1])},
    }
    for name in rng.sample(sorted(extras), rng.randint(0, 2)):
        fields[name] = extras[name]
    names = list(fields)
    rng.shuffle(names)
    schema = strict_object({name: fields[name] for name in names}, optional=rng.randint(0, 1))
    schema["$defs"] = defs
    return schema


def schema_suite(n: int = N_SCHEMAS, seed: int = 15) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    return [(TOPICS[i % len(TOPICS)], random_schema(rng)) for i in range(n)]


def test_schema_suite_covers_the_features():
    for _, schema in schema_suite():
        jsonschema.Draft202012Validator.check_schema(schema)
        text = json.dumps(schema)
        assert all(k in text for k in ('"anyOf"', '"enum"', '"$ref"', '"type": "array"')), text
        nested = [p for p in schema["properties"].values() if p.get("type") == "object"]
        assert nested and any(q.get("type") == "object" for q in nested[0]["properties"].values())


def test_fifty_schemas_answer_and_validate(model):
    """The issue's acceptance: every answer ends with stop (not at the token limit), parses and validates."""
    failures = []
    started = time.perf_counter()
    n_tokens = 0
    for i, (topic, schema) in enumerate(schema_suite()):
        constraint = JsonConstraint.for_schema(model.tokenizer, schema)
        text, finish = answer(model, f"Describe {topic} as JSON.", constraint, seed=i)
        n_tokens += len(model.tokenize(text, add_special=False))
        try:
            assert finish == "stop", f"finished with {finish}"
            jsonschema.validate(json.loads(text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            failures.append(f"schema {i} ({topic}): {str(exc).splitlines()[0]}: {text[:300]}")
    seconds = time.perf_counter() - started
    print(f"{N_SCHEMAS - len(failures)}/{N_SCHEMAS} answers valid, {n_tokens} tokens in {seconds:.1f} s")
    assert not failures, "\n".join(failures)


# ---- qrun --json-schema ----


def test_qrun_json_schema(smollm2_package_gguf, tmp_path):
    schema_file = tmp_path / "person.json"
    schema_file.write_text(json.dumps(PERSON))
    args = [str(smollm2_package_gguf), "-t", "2", "--seed", "3", "--json", "-p", "Name a pet, as JSON."]
    result = CliRunner().invoke(cli.main, args + ["--json-schema", str(schema_file)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    jsonschema.validate(json.loads(record["text"]), PERSON)


def test_qrun_chat_json_schema_every_turn(smollm2_package_gguf, tmp_path):
    schema_file = tmp_path / "person.json"
    schema_file.write_text(json.dumps(PERSON))
    args = [str(smollm2_package_gguf), "-t", "2", "--seed", "5", "--json-schema", str(schema_file)]
    result = CliRunner().invoke(cli.main, args, input="A cat, as JSON.\nNow a dog.\n")
    assert result.exit_code == 0, result.output
    replies = result.stdout.splitlines()
    assert len(replies) == 2  # each turn its own constraint, from an empty answer
    for reply in replies:
        jsonschema.validate(json.loads(reply), PERSON)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"type": "object"', "not JSON: Expecting ',' delimiter: line 1 column 18"),
        ('{"type": "foo"}', "Invalid type: foo"),
        ("\xff", "not UTF-8 text (byte 0)"),
    ],
)
def test_qrun_bad_json_schema_file(smollm2_package_gguf, tmp_path, content, message):
    schema_file = tmp_path / "bad.json"
    schema_file.write_bytes(content.encode("latin-1"))
    args = [str(smollm2_package_gguf), "-p", "Hi", "--json-schema", str(schema_file)]
    result = CliRunner().invoke(cli.main, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"qrun: error: {schema_file}: ") and message in lines[0], lines[0]


def test_qrun_missing_json_schema_file(smollm2_package_gguf, tmp_path):
    result = CliRunner().invoke(cli.main, [str(smollm2_package_gguf), "-p", "Hi", "--json-schema", tmp_path / "no"])
    assert result.exit_code == 1 and "cannot read" in result.stderr
