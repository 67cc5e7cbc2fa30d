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
    name: str
    description: str
    documents: Callable[[str], list[str]]  # part -> texts
    tasks: Callable[[], list[TaskItem]] = lambda: []  # evaluation part only
    whole_documents: bool = False  # score each document in one window (long context), not in ctx-sized windows


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


def _maths_problem(rng: random.Random) -> tuple[str, int]:
    kind = rng.randrange(6)
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if kind == 0:
        return f"What is {a} + {b}?", a + b
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", a - b
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", a * b
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if kind == 3:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == 4:
        a, b = max(a, b), min(a, b)
        return f"{name} had {a} {item} and gave away {b}. How many {item} are left?", a - b
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    return f"{name} buys {a} boxes with {b} {item} in each box. How many {item} is that?", a * b


def maths_problems(part: str, n: int = 120) -> list[tuple[str, int]]:
    """Problems of one part; the calibration part skips every question the evaluation part holds."""
    _check_part(part)
    held_out = set() if part == "eval" else {q for q, _ in maths_problems("eval", n)}
    rng, out, seen = random.Random(SEEDS[part]), [], set()
    while len(out) < n:
        q, a = _maths_problem(rng)
        if q not in seen and q not in held_out:
            seen.add(q)
            out.append((q, a))
    return out


MATHS_SHOTS = (("What is 3 + 4?", 7), ("Sam has 10 coins and gets 5 more. How many coins does Sam have now?", 15))


def _qa(q: str, a) -> str:
    return f"Question: {q}\nAnswer: {a}\n"


def maths(part: str) -> list[str]:
    return ["\n".join(_qa(q, a) for q, a in maths_problems(part))]


def maths_tasks(n: int = 20) -> list[TaskItem]:
    shots = "\n".join(_qa(q, a) for q, a in MATHS_SHOTS)
    return [
        TaskItem("maths", f"{shots}\nQuestion: {q}\nAnswer:", str(a), max_new_tokens=8)
        for q, a in maths_problems("eval")[:n]
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


def json_tasks(n: int = 20) -> list[TaskItem]:
    shots = "\n".join(_call_line(*c) for c in tool_calls("calibration")[:3])
    return [
        TaskItem("json", f"{TOOL_SCHEMA_TEXT}\n\n{shots}\nUser: {request}\nCall:", name, max_new_tokens=64)
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
# repetitions of FILLER (about 24 tokens each for BPE vocabularies) -> roughly 1k, 2k and 4k tokens
PASSKEY_LENGTHS = {"1k": 40, "2k": 80, "4k": 160}
PASSKEY_QUESTION = "What is the pass key? The pass key is"


def passkey_document(reps: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    key = str(rng.randint(10000, 99999))
    at = rng.randint(reps // 5, 4 * reps // 5)
    line = f"The pass key is {key}. Remember it. {key} is the pass key. "
    text = (
        "There is important info hidden inside a lot of irrelevant text. Find it and memorize it.\n"
        + FILLER * at + line + FILLER * (reps - at) + "\n" + PASSKEY_QUESTION
    )  # fmt: skip
    return text, key


def long_context(part: str) -> list[str]:
    _check_part(part)
    base = SEEDS[part] * 1000
    return [passkey_document(reps, base + i)[0] for i, reps in enumerate(PASSKEY_LENGTHS.values())]


def passkey_tasks() -> list[TaskItem]:
    base = SEEDS["eval"] * 1000
    items = []
    for i, reps in enumerate(PASSKEY_LENGTHS.values()):
        text, key = passkey_document(reps, base + i)
        items.append(TaskItem("passkey", text, key, max_new_tokens=8))
    return items


# ---------------------------------------------------------------- the table

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("prose", "English prose: paragraphs written for qconv, then the Python reference's topic texts", prose),
        Suite("code", "Python: the first lines of a fixed list of the interpreter's standard-library modules", code),
        Suite("maths", "generated arithmetic and word problems with answers", maths, maths_tasks),
        Suite("json", "generated tool calls (JSON) after a tool schema", json_calls, json_tasks),
        Suite("multilingual", "short texts in 14+ languages and 10+ scripts", multilingual),
        Suite("long_context", "a passkey hidden in ~1k/2k/4k tokens of filler", long_context, passkey_tasks, True),
    )
}


def get_suites(names: list[str] | None = None) -> list[Suite]:
    if not names:
        return list(SUITES.values())
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}; valid suites: {', '.join(SUITES)}")
    return [SUITES[n] for n in names]


def calibration_text(names: list[str] | None = None) -> str:
    """Every calibration document of the named suites (all by default), one after another."""
    return "\n\n".join(doc for s in get_suites(names) for doc in s.documents("calibration"))


def provenance() -> dict:
    """What the suites' texts depend on besides this package: the Python whose stdlib the code suite reads."""
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "code_modules": {part: list(mods) for part, mods in CODE_MODULES.items()},
    }
