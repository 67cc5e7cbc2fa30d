"""The task gate on the user's own task file: a degraded quantization (q2_k of the rotated sample, whose weights sit
on no 4-bit grid) fails `--gate task_drop=0.10` with the suite named and the test statistic in the report, while
q8_0 and q4_k_m of the sample pass the same gate on the same items.

The items are facts the 135M sample answers through its chat template (its f32 file gets about three quarters
right); the test writes its own task file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.reference

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "the United Kingdom": "London", "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "Greece": "Athens",
    "Portugal": "Lisbon", "Canada": "Ottawa", "Australia": "Canberra", "India": "Delhi", "Ireland": "Dublin",
    "Norway": "Oslo", "Sweden": "Stockholm", "Austria": "Vienna", "Poland": "Warsaw", "Turkey": "Ankara",
    "Argentina": "Buenos Aires", "Kenya": "Nairobi", "Thailand": "Bangkok", "South Korea": "Seoul",
    "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Hungary": "Budapest", "Peru": "Lima", "Cuba": "Havana", "Chile": "Santiago", "Iran": "Tehran",
    "Iraq": "Baghdad", "Vietnam": "Hanoi", "the Philippines": "Manila", "Indonesia": "Jakarta", "Nigeria": "Abuja",
    "Ukraine": "Kyiv", "the Czech Republic": "Prague", "Scotland": "Edinburgh", "Wales": "Cardiff",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Iceland": "Reykjavik",
    "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Afghanistan": "Kabul",
}  # fmt: skip
FACTS = [
    ("What color is the sky on a clear day?", "blue"), ("What is the largest planet in our solar system?", "Jupiter"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"), ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"), ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the opposite of hot?", "cold"), ("Which planet is known as the Red Planet?", "Mars"),
    ("What gas do plants absorb from the air?", "carbon dioxide"), ("What is the chemical symbol for gold?", "Au"),
]  # fmt: skip


def facts_task_file(path: Path) -> Path:
    items = [(f"What is the capital of {country}?", city) for country, city in CAPITALS.items()] + FACTS
    with open(path, "w") as f:
        for prompt, expected in items:
            f.write(
                json.dumps({"capability": "facts", "prompt": prompt, "expected": expected, "max_tokens": 16}) + "\n"
            )
    assert len(items) >= 60
    return path


def gguf_of(folder: Path, type_name: str, out: Path) -> Path:
    from qconv.converter.convert import convert_to_gguf

    path = out / f"{folder.name}-{type_name}.gguf"
    convert_to_gguf(folder, path, type_name, progress=False)
    return path


def qconv_eval(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from qconv.converter.cli import main; main()", "eval", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def test_degraded_quantization_fails_the_task_gate_and_good_ones_pass(tmp_path):
    from qconv.samples.smollm2 import cached_smollm2, cached_smollm2_rotated

    tasks = facts_task_file(tmp_path / "facts.jsonl")
    sample, rotated = cached_smollm2(), cached_smollm2_rotated()
    common = ["--suite", "none", "--tasks", tasks, "--gate", "task_drop=0.10", "-t", "2", "-q"]

    good = qconv_eval(gguf_of(sample, "q8_0", tmp_path), gguf_of(sample, "q4_k_m", tmp_path),
                      "--ref", gguf_of(sample, "f32", tmp_path), *common, "-o", tmp_path / "good")  # fmt: skip
    print(good.stdout)
    assert good.returncode == 0, good.stderr
    report = json.loads((tmp_path / "good" / "report.json").read_text())
    for candidate in report["candidates"]:
        facts = candidate["tasks"]["facts"]
        assert facts["n"] >= 60 and facts["ref_accuracy"] >= 0.5  # the sample answers these: the gate can bite
        assert all(r["passed"] for r in candidate["gate_results"])

    bad = qconv_eval(gguf_of(rotated, "q2_k", tmp_path), "--ref", gguf_of(rotated, "f32", tmp_path), *common,
                     "-o", tmp_path / "bad")  # fmt: skip
    print(bad.stdout)
    assert bad.returncode == 2, bad.stderr
    assert "facts: task accuracy drop above 0.1" in bad.stderr and "exact McNemar p=" in bad.stderr
    [candidate] = json.loads((tmp_path / "bad" / "report.json").read_text())["candidates"]
    facts = candidate["tasks"]["facts"]
    assert (
        facts["ref_accuracy"] - facts["quant_accuracy"] > 0.2 and facts["p_value"] < 0.001 and facts["b"] > facts["c"]
    )
    [row] = candidate["gate_results"]
    assert row["suite"] == "facts" and not row["passed"] and "McNemar" in row["detail"]
