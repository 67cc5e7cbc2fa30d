"""The built-in text suites: one row per capability, each split into a calibration part and a held-out evaluation
part that never overlap (tests/converter/test_suites.py checks it).

A suite gives, for a part, its documents (text scored by KL divergence and perplexity, and fed to calibration) and
its task items (a prompt and the answer a greedy continuation must contain; only in the evaluation part).
Texts are our own (the .txt files beside this module) or generated here from fixed seeds; the code suite reads
the interpreter's own standard-library sources from a fixed list, so it depends on the Python version, which
`provenance()` records.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
PARTS = ("calibration", "eval")


@dataclass(frozen=True)
class TaskItem:
    kind: str  # "maths" | "json" | "passkey"
    prompt: str  # fed raw (no chat template); the answer follows it
    expected: str  # what the continuation must give (the number; the tool's name for json)
    max_new_tokens: int = 24


@dataclass(frozen=True)
class Suite:
    """documents(part, max_len_tokens) -> texts; tasks(max_len_tokens) -> the evaluation part's items. Both take
    max_len_tokens with a default (MAX_LEN_TOKENS): only long-context suites size their texts by it, the others'
    texts are cut into ctx-sized windows by the evaluation and their prompts are short."""

    name: str
    description: str
    documents: Callable[..., list[str]]
    tasks: Callable[..., list[TaskItem]] = lambda max_len_tokens=None: []
    whole_documents: bool = False  # score each document in one window (long context), not in ctx-sized windows


def _fixed_documents(documents: Callable[[str], list[str]]) -> Callable[..., list[str]]:
    """Documents whose length does not depend on max_len_tokens, with the Suite's signature."""
    return lambda part, max_len_tokens=None: documents(part)


def _fixed_tasks(tasks: Callable[[], list[TaskItem]]) -> Callable[..., list[TaskItem]]:
    return lambda max_len_tokens=None: tasks()


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"unknown suite part {part!r}; expected one of {PARTS}")


# ---------------------------------------------------------------- prose


PYDOC_TOPIC_CHARS = 7000  # of the Python reference's topic texts, after our own paragraphs


def prose(part: str) -> list[str]:
    """Our paragraphs, then explanatory prose from the interpreter's own documentation (pydoc_data.topics): the
    topics in sorted order, alternately to calibration and evaluation, each cut at a paragraph end."""
    _check_part(part)
    ours = (HERE / f"prose_{part}.txt").read_text(encoding="utf-8")
    from pydoc_data.topics import topics

    def paragraphs(key: str) -> list[str]:
        found = [p.strip() for p in topics[key].split("\n\n") if p.strip() and not p.startswith((" ", "*", "="))]
        return found[:3]

    keys = sorted(topics)
    # some topics repeat a sentence of another: evaluation paragraphs sharing a line with calibration are left out
    calibration_lines = set()
    if part == "eval":
        for p in prose("calibration")[1].split("\n\n"):
            calibration_lines |= {line.strip() for line in p.splitlines() if len(line.strip()) > 30}
    taken, size = [], 0
    for key in keys[PARTS.index(part) :: 2]:
        kept = [p for p in paragraphs(key) if not {line.strip() for line in p.splitlines()} & calibration_lines]
        text = "\n\n".join(kept)
        if len(text) > 200:
            taken.append(text)
            size += len(text)
        if size >= PYDOC_TOPIC_CHARS:
            break
    return [ours, "\n\n".join(taken)]


def multilingual(part: str) -> list[str]:
    _check_part(part)
    return [(HERE / f"multilingual_{part}.txt").read_text(encoding="utf-8")]


# ---------------------------------------------------------------- code: the interpreter's own standard library

CODE_MODULES = {
    "calibration": ("textwrap", "fractions", "heapq", "bisect", "shlex", "colorsys", "sched", "graphlib"),
    "eval": ("statistics", "fnmatch", "queue", "string", "glob", "shutil", "numbers", "reprlib"),
}
CODE_CHARS_PER_MODULE = 2000  # the first lines of each module, cut at a line end


def _module_source(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    text = Path(spec.origin).read_text(encoding="utf-8")
    if len(text) > CODE_CHARS_PER_MODULE:
        text = text[: text.rfind("\n", 0, CODE_CHARS_PER_MODULE) + 1]
    return text


def code(part: str) -> list[str]:
    _check_part(part)
    return [src for src in map(_module_source, CODE_MODULES[part]) if src]


# ---------------------------------------------------------------- maths: generated problems with answers

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jon", "Kemi", "Lea")
ITEMS = ("apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells")
SEEDS = {"calibration": 1, "eval": 2}
Fact = tuple[int, str, int]  # (a, op, b), op one of OPERATIONS
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}


def _maths_problem(rng: random.Random) -> tuple[str, int, Fact]:
    """A problem for the documents (text scored for KL divergence, and calibration): two-digit sums and
    differences, tables to 12 and word problems, harder than the task items."""
    kind = rng.randrange(6)
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if kind in (1, 4):
        a, b = max(a, b), min(a, b)
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    if kind == 5:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
    fact = (a, "+-x+-x"[kind], b)
    answer = OPERATIONS[fact[1]](a, b)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    question = (
        f"What is {a} + {b}?", f"What is {a} - {b}?", f"What is {a} times {b}?",
        f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
        f"{name} had {a} {item} and gave away {b}. How many {item} are left?",
        f"{name} buys {a} boxes with {b} {item} in each box. How many {item} is that?",
    )[kind]  # fmt: skip
    return question, answer, fact


def maths_problems(part: str, n: int = 120) -> list[tuple[str, int]]:
    """Problems of one part; the calibration part skips every question the evaluation part holds and every fact
    (operands and operation) of the evaluation's task items."""
    _check_part(part)
    held_out, held_facts = set(), set()
    if part == "calibration":
        held_out, held_facts = {q for q, _ in maths_problems("eval", n)}, set(maths_facts("eval"))
    rng, out, seen = random.Random(SEEDS[part]), [], set()
    while len(out) < n:
        q, a, fact = _maths_problem(rng)
        if q not in seen and q not in held_out and fact not in held_facts:
            seen.add(q)
            out.append((q, a))
    return out


# The task items are what SmolLM2-135M-Instruct (f32) mostly gets right, so that a drop in accuracy is the
# quantization's: with these shots it solves 38 of the 48 (sums 14/14, products 18/21, differences 6/13), where
# questions ("Question: What is 43 - 24?") of the documents' kind got 7/40 and any "Question/Answer" layout at most
# 60%; one-digit sums with a carry, tables to 9 x 9 and differences of teens each got about 70%, 65% and 25%.
MATHS_SHOTS: tuple[Fact, ...] = (
    (2, "+", 3), (9, "-", 4), (3, "x", 4), (7, "+", 8), (12, "-", 5), (6, "x", 7),
    (6, "+", 6), (8, "-", 2), (5, "x", 5), (1, "+", 9), (15, "-", 8), (2, "x", 9),
)  # fmt: skip
MATHS_TASKS = 48


def _easy_facts() -> list[Fact]:
    sums = [(a, "+", b) for a in range(1, 6) for b in range(1, 6)]
    differences = [(a, "-", b) for a in range(2, 8) for b in range(1, a)]
    small_tables = [(a, "x", b) for a in range(2, 6) for b in range(2, 6)]
    by_two_and_ten = [(a, "x", 2) for a in range(6, 13)] + [(a, "x", 10) for a in range(2, 13)]
    doubles = [(a, "+", a) for a in range(6, 10)]
    return [f for f in sums + differences + small_tables + by_two_and_ten + doubles if f not in MATHS_SHOTS]


def maths_facts(part: str) -> list[Fact]:
    """The easy facts, shuffled once: the first MATHS_TASKS are the evaluation's task items, the rest go to the
    calibration text."""
    _check_part(part)
    facts = _easy_facts()
    random.Random(SEEDS["eval"]).shuffle(facts)
    return facts[:MATHS_TASKS] if part == "eval" else facts[MATHS_TASKS:]


def _equation(fact: Fact) -> str:
    a, op, b = fact
    return f"{a} {op} {b} = {OPERATIONS[op](a, b)}\n"


def _qa(q: str, a) -> str:
    return f"Question: {q}\nAnswer: {a}\n"


def maths(part: str) -> list[str]:
    text = "\n".join(_qa(q, a) for q, a in maths_problems(part))
    if part == "calibration":
        text += "\n" + "".join(map(_equation, maths_facts("calibration")))
    return [text]


def maths_tasks(n: int = MATHS_TASKS) -> list[TaskItem]:
    """Bare equations after twelve solved ones ("6 x 7 = 42"): a 135M model follows this layout far better than
    questions (see MATHS_SHOTS)."""
    shots = "".join(map(_equation, MATHS_SHOTS))
    return [
        TaskItem("maths", f"{shots}{a} {op} {b} =", str(OPERATIONS[op](a, b)), max_new_tokens=5)
        for a, op, b in maths_facts("eval")[:n]
    ]


# ---------------------------------------------------------------- json: generated tool calls with a schema

TOOLS = {
    "get_weather": {"city": "string", "unit": ["celsius", "fahrenheit"]},
    "set_timer": {"minutes": "integer", "label": "string"},
    "send_email": {"to": "string", "subject": "string"},
    "convert_currency": {"amount": "number", "from": "string", "to": "string"},
    "search_web": {"query": "string", "max_results": "integer"},
}
CITIES = ("Paris", "Lagos", "Lima", "Oslo", "Hanoi", "Cairo", "Quito", "Perth", "Seoul", "Porto", "Dakar", "Riga")
CURRENCIES = ("USD", "EUR", "JPY", "GBP", "INR", "BRL", "CHF")
TOPICS = ("bread recipes", "train times", "river floods", "bee dances", "volcano news", "chess openings", "tide tables")
PEOPLE = ("maria@example.com", "tom@example.org", "li@example.net", "sara@example.com", "omar@example.org")
SUBJECTS = ("Lunch on Friday", "The report", "Holiday plans", "Meeting notes", "Invoice 42")
LABELS = ("tea", "pasta", "laundry", "call mum", "stretch", "bread")


def _tool_call(rng: random.Random) -> tuple[str, dict]:
    name = rng.choice(sorted(TOOLS))
    if name == "get_weather":
        city, unit = rng.choice(CITIES), rng.choice(TOOLS[name]["unit"])
        return f"What is the weather in {city} in {unit}?", {"city": city, "unit": unit}
    if name == "set_timer":
        minutes, label = rng.randint(1, 90), rng.choice(LABELS)
        return f"Set a timer for {minutes} minutes called {label}.", {"minutes": minutes, "label": label}
    if name == "send_email":
        to, subject = rng.choice(PEOPLE), rng.choice(SUBJECTS)
        return f"Email {to} with the subject {subject}.", {"to": to, "subject": subject}
    if name == "convert_currency":
        amount, a, b = rng.randint(1, 500), *rng.sample(CURRENCIES, 2)
        return f"Convert {amount} {a} to {b}.", {"amount": amount, "from": a, "to": b}
    query, k = rng.choice(TOPICS), rng.randint(1, 10)
    return f"Search the web for {query} and show {k} results.", {"query": query, "max_results": k}


def tool_calls(part: str, n: int = 60) -> list[tuple[str, dict, str]]:
    """(request, arguments, tool name); the calibration part skips every request the evaluation part holds."""
    _check_part(part)
    held_out = set() if part == "eval" else {r for r, _, _ in tool_calls("eval", n)}
    rng, out, seen = random.Random(100 + SEEDS[part]), [], set()
    while len(out) < n:
        request, arguments = _tool_call(rng)
        name = next(t for t in TOOLS if set(TOOLS[t]) == set(arguments))
        if request not in seen and request not in held_out:
            seen.add(request)
            out.append((request, arguments, name))
    return out


TOOL_SCHEMA_TEXT = "Tools (answer with one JSON object per line):\n" + "\n".join(
    json.dumps({"name": name, "parameters": params}) for name, params in TOOLS.items()
)


def _call_line(request: str, arguments: dict, name: str) -> str:
    return f"User: {request}\nCall: {json.dumps({'name': name, 'arguments': arguments})}\n"


def json_calls(part: str) -> list[str]:
    return [TOOL_SCHEMA_TEXT + "\n\n" + "\n".join(_call_line(*c) for c in tool_calls(part))]


JSON_CALL_TOKENS = 40  # the longest right call is 34 tokens (SmolLM2); a longer answer is no valid call anyway


def json_tasks(n: int = 20) -> list[TaskItem]:
    shots = "\n".join(_call_line(*c) for c in tool_calls("calibration")[:3])
    return [
        TaskItem(
            "json", f"{TOOL_SCHEMA_TEXT}\n\n{shots}\nUser: {request}\nCall:", name, max_new_tokens=JSON_CALL_TOKENS
        )
        for request, _, name in tool_calls("eval")[:n]
    ]


def valid_tool_call(text: str) -> str | None:
    """The tool's name if text (up to the end of its line) is one JSON object with a string "name", else None.
    Validity, not correctness: a 100M-parameter model rarely gets the schema right (it writes "parameters" for
    "arguments", invents tools), but a quantization that breaks its JSON shows here; matches_schema is stricter."""
    line = text.strip().split("\n", 1)[0]
    try:
        call = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    return call["name"]


def matches_schema(call_text: str) -> bool:
    """Whether a valid call also names a tool of TOOLS with exactly its parameters, of the right kinds."""
    if valid_tool_call(call_text) is None:
        return False
    call = json.loads(call_text.strip().split("\n", 1)[0])
    if set(call) != {"name", "arguments"} or not isinstance(call["arguments"], dict):
        return False
    schema = TOOLS.get(call["name"])
    if schema is None or set(call["arguments"]) != set(schema):
        return False
    for key, kind in schema.items():
        value = call["arguments"][key]
        ok = (
            value in kind if isinstance(kind, list)
            else isinstance(value, str) if kind == "string"
            else isinstance(value, int) and not isinstance(value, bool) if kind == "integer"
            else isinstance(value, (int, float)) and not isinstance(value, bool)
        )  # fmt: skip
        if not ok:
            return False
    return True


# ---------------------------------------------------------------- long context: a passkey hidden in filler

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
# Lengths are asked in tokens but built in FILLER repetitions: BPE vocabularies take 24 tokens a repetition and
# 56 for the rest of the document (SmolLM2: exactly), so a document meant for L tokens has (L - 56) // 24
# repetitions; a vocabulary that splits finer can run longer, and the evaluation cuts anything past the context.
FILLER_TOKENS = 24
PASSKEY_FRAME_TOKENS = 56  # the instruction, the key's line and the question
MAX_LEN_TOKENS = 2048  # the default bound of long-context documents and prompts: min(context, this), --long: context
PASSKEY_ITEMS = 20
PASSKEY_MIN_TOKENS = 128  # the shortest item; the others grow geometrically to the bound (~14k tokens in all)
PASSKEY_QUESTION = "What is the pass key? The pass key is"
PASSKEY_ANSWER_TOKENS = 7  # a space and five digits, and one more; with a BOS the longest item still fits the bound
# evaluation keys have five digits, calibration keys six: the parts can never share one
PASSKEY_KEYS = {"calibration": (100000, 999999), "eval": (10000, 99999)}


def filler_repetitions(tokens: int) -> int:
    return max(1, (tokens - PASSKEY_FRAME_TOKENS) // FILLER_TOKENS)


def passkey_lengths(max_len_tokens: int = MAX_LEN_TOKENS, n: int = PASSKEY_ITEMS) -> list[int]:
    """n lengths in tokens, geometric from PASSKEY_MIN_TOKENS (or the bound, if smaller) to max_len_tokens: most
    items stay short, which keeps the default to ~14k prompt tokens per model (~25 s for the f32 135M sample on two
    threads), and the last reaches the bound."""
    low = min(PASSKEY_MIN_TOKENS, max_len_tokens)
    ratio = (max_len_tokens / low) ** (1 / max(1, n - 1))
    return [min(max_len_tokens, round(low * ratio**i)) for i in range(n)]


def passkey_document(reps: int, key: str, depth: float) -> str:
    """The key's line after depth (0..1) of reps filler repetitions, then the question."""
    at = round(depth * reps)
    line = f"The pass key is {key}. Remember it. {key} is the pass key. "
    return (
        "There is important info hidden inside a lot of irrelevant text. Find it and memorize it.\n"
        + FILLER * at + line + FILLER * (reps - at) + "\n" + PASSKEY_QUESTION
    )  # fmt: skip


def _passkeys(part: str, n: int) -> list[tuple[str, float]]:
    """(key, depth) per item: distinct keys from a fixed seed; depths spread over 10-90% by the golden ratio, so
    neighbouring lengths hide their key at different depths."""
    rng, low_high = random.Random(SEEDS[part] * 1000), PASSKEY_KEYS[part]
    keys: list[str] = []
    while len(keys) < n:
        key = str(rng.randint(*low_high))
        if key not in keys:
            keys.append(key)
    return [(key, 0.1 + 0.8 * ((i + 1) * 0.6180339887 % 1)) for i, key in enumerate(keys)]


def _passkey_prompts(part: str, max_len_tokens: int, n: int) -> list[tuple[str, str]]:
    """(prompt, key) of n passkey documents, shortest first, whose prompt and answer fit max_len_tokens."""
    lengths = passkey_lengths(max_len_tokens - PASSKEY_ANSWER_TOKENS - 1, n)
    return [
        (passkey_document(filler_repetitions(tokens), key, depth), key)
        for tokens, (key, depth) in zip(lengths, _passkeys(part, n))
    ]


def long_context(part: str, max_len_tokens: int = MAX_LEN_TOKENS) -> list[str]:
    """The passkey documents of about half and all of max_len_tokens, scored whole (their last positions). The
    evaluation's are two of the passkey task prompts: the longest, scored last, stays in the cache and its task item
    costs only its answer."""
    _check_part(part)
    prompts = [prompt for prompt, _ in _passkey_prompts(part, max_len_tokens, PASSKEY_ITEMS)]
    lengths = passkey_lengths(max_len_tokens - PASSKEY_ANSWER_TOKENS - 1, PASSKEY_ITEMS)
    half = min(range(len(lengths)), key=lambda i: abs(lengths[i] - max_len_tokens // 2))
    return [prompts[half], prompts[-1]]


def passkey_tasks(max_len_tokens: int = MAX_LEN_TOKENS, n: int = PASSKEY_ITEMS) -> list[TaskItem]:
    """n passkey items, shortest first, whose prompt and answer fit max_len_tokens."""
    return [
        TaskItem("passkey", prompt, key, max_new_tokens=PASSKEY_ANSWER_TOKENS)
        for prompt, key in _passkey_prompts("eval", max_len_tokens, n)
    ]


# ---------------------------------------------------------------- the table

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("prose", "English prose: paragraphs written for qconv, then the Python reference's topic texts",
              _fixed_documents(prose)),
        Suite("code", "Python: the first lines of a fixed list of the interpreter's standard-library modules",
              _fixed_documents(code)),
        Suite("maths", "generated arithmetic and word problems; tasks: one-digit sums and differences, small tables",
              _fixed_documents(maths), _fixed_tasks(maths_tasks)),
        Suite("json", "generated tool calls (JSON) after a tool schema", _fixed_documents(json_calls),
              _fixed_tasks(json_tasks)),
        Suite("multilingual", "short texts in 14+ languages and 10+ scripts", _fixed_documents(multilingual)),
        Suite("long_context", f"{PASSKEY_ITEMS} passkeys hidden in filler, {PASSKEY_MIN_TOKENS} tokens up to "
              f"min(context, {MAX_LEN_TOKENS}) (--long: the context)", long_context, passkey_tasks, True),
    )
}  # fmt: skip


def get_suites(names: list[str] | None = None) -> list[Suite]:
    if not names:
        return list(SUITES.values())
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}; valid suites: {', '.join(SUITES)}")
    return [SUITES[n] for n in names]


def calibration_text(names: list[str] | None = None, max_len_tokens: int = MAX_LEN_TOKENS) -> str:
    """Every calibration document of the named suites (all by default), one after another."""
    return "\n\n".join(doc for s in get_suites(names) for doc in s.documents("calibration", max_len_tokens))


def provenance() -> dict:
    """What the suites' texts depend on besides this package: the Python whose stdlib the code suite reads."""
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "code_modules": {part: list(mods) for part, mods in CODE_MODULES.items()},
    }
