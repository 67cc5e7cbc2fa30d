"""`qconv eval --junit FILE`: the gates as JUnit XML, the format CI systems show as test results. One test suite per
candidate; one test case per (suite, gate) that applies, failed with the gate's line, and one per suite that no
gate covers ("measured"), so every suite of the run appears."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from qconv.formats.atomic_write import AtomicFile


def junit_tree(report: dict) -> ET.ElementTree:
    root = ET.Element("testsuites", name="qconv eval")
    total_tests = total_failures = 0
    for candidate in report["candidates"]:
        suite_el = ET.SubElement(root, "testsuite", name=candidate["quant"])
        results = candidate.get("gate_results") or []
        names = [s["name"] for s in candidate["suites"]] + [n for n in candidate["tasks"] if n not in
                                                             {s["name"] for s in candidate["suites"]}]  # fmt: skip
        names += [r["name"] for r in candidate.get("embeddings", [])]  # an embedding model's (retrieval among them)
        tests = failures = 0
        for name in names:
            rows = [r for r in results if r["suite"] == name]
            if not rows:
                case = ET.SubElement(suite_el, "testcase", classname=name, name="measured")
                ET.SubElement(case, "system-out").text = _measured(candidate, name)
                tests += 1
            for r in rows:
                case = ET.SubElement(suite_el, "testcase", classname=name, name=f"{r['gate']}={r['threshold']:g}")
                tests += 1
                message = f"{name}: {r['gate']} {r['value']:.6g} against {r['threshold']:g} ({r['detail']})"
                if r["passed"]:
                    ET.SubElement(case, "system-out").text = message
                else:
                    failures += 1
                    ET.SubElement(case, "failure", message=message, type="gate")
        suite_el.set("tests", str(tests))
        suite_el.set("failures", str(failures))
        total_tests += tests
        total_failures += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    return ET.ElementTree(root)


def _measured(candidate: dict, name: str) -> str:
    row = next((s for s in candidate["suites"] if s["name"] == name), None)
    parts = [f"KLD {row['kld_mean']:.6g}, top-1 {row['top1']:.4f}, ppl ratio {row['ppl_ratio']:.4f}"] if row else []
    vectors = next((r for r in candidate.get("embeddings", []) if r["name"] == name), None)
    if vectors:
        parts.append(f"cosine mean {vectors['cos_mean']:.6f}, min {vectors['cos_min']:.6f}")
    retrieval = candidate.get("retrieval", {}).get(name)
    if retrieval:
        parts.append(f"retrieval accuracy ref {retrieval['ref_accuracy']:.3f} quant {retrieval['quant_accuracy']:.3f}")
    task = candidate["tasks"].get(name)
    if task:
        parts.append(f"accuracy ref {task['ref_accuracy']:.3f} quant {task['quant_accuracy']:.3f}")
    return "; ".join(parts)


def write_junit(report: dict, path: Path) -> None:
    tree = junit_tree(report)
    ET.indent(tree)
    with AtomicFile(Path(path)) as tmp:
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
