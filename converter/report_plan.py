"""What a TypePlan gives the user: the type per tensor group, fallbacks, size and real bits per weight."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from qconv.converter.plan import TypePlan


def tensor_group(name: str) -> str:
    """blk.12.attn_q.weight -> attn_q.weight; token_embd.weight stays."""
    parts = name.split(".")
    return ".".join(parts[2:]) if parts[0] == "blk" else name


def plan_summary(plan: TypePlan, out_path: Path | None = None) -> dict:
    groups: dict[str, dict] = defaultdict(lambda: {"types": defaultdict(int), "bytes": 0, "tensors": 0})
    for c in plan.choices:
        g = groups[tensor_group(c.name)]
        g["types"][c.ggml_type.name.lower()] += 1
        g["bytes"] += c.nbytes
        g["tensors"] += 1
    return {
        "output": str(out_path) if out_path else None,
        "type": plan.type_name,
        "file_type": int(plan.file_type),
        "n_tensors": len(plan.choices),
        "n_parameters": plan.n_elements,
        "bytes": plan.nbytes,
        "bits_per_weight": round(plan.bits_per_weight, 4),
        "fallbacks": [
            {"tensor": c.name, "type": c.ggml_type.name.lower(), "reason": c.reason} for c in plan.fallbacks()
        ],
        "groups": {
            k: {"types": dict(v["types"]), "bytes": v["bytes"], "tensors": v["tensors"]} for k, v in groups.items()
        },
        "tensors": [{"name": c.name, "type": c.ggml_type.name.lower(), "reason": c.reason} for c in plan.choices],
    }


def plan_table(plan: TypePlan, out_path: Path | None = None) -> str:
    summary = plan_summary(plan, out_path)
    width = max(len(g) for g in summary["groups"])
    lines = [f"{'tensor group':<{width}}  {'tensors':>7}  {'types':<24} {'MiB':>9}"]
    for group, g in summary["groups"].items():
        types = ", ".join(f"{t} x{n}" for t, n in g["types"].items())
        lines.append(f"{group:<{width}}  {g['tensors']:>7}  {types:<24} {g['bytes'] / 2**20:>9.2f}")
    n_fallback = len(summary["fallbacks"])
    if n_fallback:
        lines.append(
            f"{n_fallback} of {summary['n_tensors']} tensors fell back to another type (row length vs block size)"
        )
    where = f" -> {out_path}" if out_path else ""
    lines.append(
        f"--type {plan.type_name}: {summary['n_parameters']:,} weights, {plan.nbytes / 2**20:.1f} MiB, "
        f"{plan.bits_per_weight:.3f} bits per weight{where}"
    )
    return "\n".join(lines)
