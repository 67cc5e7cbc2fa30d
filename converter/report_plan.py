"""What a TypePlan gives the user: the type per tensor group, fallbacks, size and real bits per weight."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from qconv.converter.plan import FILE_TYPES, TypePlan, make_plan

# Single-type files a mixture is compared with: if one of these, at more nominal bits, is no larger (or less than
# NEARLY_AS_SMALL larger), the mixture buys almost nothing and the user should know.
SIMPLER_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
NEARLY_AS_SMALL = 0.05


def nominal_bits(type_name: str) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[FILE_TYPES[type_name][1]]
    return 8 * size / block


def no_smaller_than(plan: TypePlan) -> tuple[str, int] | None:
    """The cheapest simpler type (more nominal bits) whose file would be no larger than this plan's, if any."""
    shapes = {c.name: c.shape for c in plan.choices}
    requested = nominal_bits(plan.type_name)
    for simpler in SIMPLER_TYPES:
        if simpler == plan.type_name or nominal_bits(simpler) <= requested:
            continue
        size = make_plan(shapes, simpler).nbytes
        if plan.nbytes >= size * (1 - NEARLY_AS_SMALL):
            return simpler, size
    return None


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
        "no_smaller_than": dict(zip(("type", "bytes"), simpler, strict=True))
        if (simpler := no_smaller_than(plan))
        else None,
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
            f"{n_fallback} of {summary['n_tensors']} tensors fell back to another type: their row length is not a "
            "multiple of the block size"
        )
    if summary["no_smaller_than"]:
        other = summary["no_smaller_than"]
        lines.append(
            f"warning: this --type {plan.type_name} file ({plan.nbytes / 2**20:.1f} MiB) is "
            f"{'no smaller than' if plan.nbytes >= other['bytes'] else 'hardly smaller than'} --type {other['type']} "
            f"({other['bytes'] / 2**20:.1f} MiB), which has more bits per weight"
        )
    where = f" -> {out_path}" if out_path else ""
    lines.append(
        f"--type {plan.type_name}: {summary['n_parameters']:,} weights, {plan.nbytes / 2**20:.1f} MiB, "
        f"{plan.bits_per_weight:.3f} bits per weight{where}"
    )
    return "\n".join(lines)
