"""What compiling makes of a segment whose backend left some quantized nodes in fp32 to hold its
accuracy limit (an artifact's meta["kept_fp32"]: backends/onnx_sensitivity.py): the bytes and
seconds they add to what the placement priced as all in the lower precision, whether the target's
memory still holds them, and what the plan says.

The placement prices a segment before it is lowered, so as all in the lower precision; which nodes
stay fp32 is known only once the backend has measured them. The plan then reports what runs: its
``resident_bytes`` with the file's growth, its ``predicted_seconds`` with those nodes' matrix
products priced in fp32 (found by the modules the nodes come from: where a module holds several
products and only some were left, that share of each)."""
from __future__ import annotations

import math


def kept(artifact) -> dict:
    """The artifact's meta["kept_fp32"], or {} where nothing was left in fp32."""
    return ((artifact.meta or {}).get("kept_fp32") if artifact is not None else None) or {}


def added_bytes(artifact) -> int:
    """Bytes the nodes left in fp32 add to ``artifact``'s file; 0 for none."""
    return kept(artifact).get("added_bytes") or 0


def resident(problem, units, t: int, artifact) -> float:
    """Bytes a segment of ``units`` lowered for target index ``t`` as ``artifact`` keeps resident
    there: its weights at the target's precision, as the placement priced them, and what the nodes
    its backend left in fp32 add."""
    return sum(problem.held(u, t) for u in units) + added_bytes(artifact)


def priced_seconds(problem, units, t: int, added: float) -> float:
    """Seconds a segment of ``units`` on target index ``t`` costs by the cost model: the
    placement's price of its units there, and ``added`` for the nodes its backend left in fp32
    (``added_seconds``)."""
    return sum(problem.cost[u][t] for u in units) + added


def fp32_shares(artifact, members, facts, paths: dict, precision: str | None) -> dict[str, float]:
    """Node name -> the share of it that runs in fp32 rather than ``precision``: for each matrix
    product among ``members`` (node names, with ``facts``) in a module some of whose quantized
    products were left in fp32 (``paths``: node name -> module path, as the ONNX nodes' modules
    are recorded), the share of that module's products left (a Linear: all of it; one of an
    attention's two projections: half, whichever it was). {} where nothing was left in fp32."""
    from hetcc.cost_model.precision import narrows, scheme_of

    nodes = kept(artifact)
    left, held = nodes.get("fp32_products") or {}, nodes.get("products_in_module") or {}
    scheme = scheme_of(precision)
    if not left or scheme is None:
        return {}
    return {m: min(1.0, left[paths[m]] / max(held.get(paths[m], 0), 1))
            for m in members if paths.get(m) in left and narrows(scheme, facts[m])}


def added_seconds(shares: dict, facts, info) -> float:
    """Seconds ``fp32_shares`` add to a segment's price on target ``info`` (a TargetInfo): each
    node's share priced in fp32 rather than in the target's precision."""
    from hetcc.cost_model.roofline import node_seconds

    return sum(share * (node_seconds(facts[m], info.device, info.profile, info.dtype)
                        - node_seconds(facts[m], info.device, info.profile, info.dtype, info.precision,
                                       info.arithmetic))
               for m, share in shares.items())


def past_memory(artifact, t: int, target, problem, used: list) -> tuple[str, float] | None:
    """Where ``artifact`` (lowered for target index ``t``) left nodes in fp32, the bytes they add
    are added to ``used`` (resident bytes per target); if that takes the target past its memory
    (its own or one it shares), why, and the segment's error all in the lower precision: the
    segment then gives the precision up for some of its units, as a segment beyond its limit does."""
    added = added_bytes(artifact)
    if added <= 0:
        return None
    used[t] += added
    if t not in problem.overfull(used):
        return None
    mb = 1e6
    if used[t] > problem.capacity[t]:
        past = f"{used[t] / mb:.1f} MB resident against its {problem.capacity[t] / mb:.1f} MB"
    else:
        group, cap = next((ts, cap) for ts, cap in problem.shared_capacity
                          if t in ts and sum(used[x] for x in ts) > cap)
        past = (f"{sum(used[x] for x in group) / mb:.1f} MB resident with "
                f"{', '.join(problem.targets[x] for x in group)}, which share {cap / mb:.1f} MB")
    nodes = kept(artifact)
    n = len(nodes.get("nodes", []))
    return (f"it held its accuracy limit with {n} quantized node{'' if n == 1 else 's'} in fp32, "
            f"{added / mb:.1f} MB more than {target.precision} was priced at, which would take {target} past "
            f"its memory ({past})", nodes.get("all_int8_relative_error", math.inf))


def note(segment: str, target, artifact, seconds: float = 0.0) -> str:
    """What a plan says of such a segment: how many nodes, the error all in the lower precision and
    with them in fp32, the modules, and the bytes and predicted seconds they add."""
    nodes = kept(artifact)
    where = list(nodes.get("where") or nodes.get("nodes") or [])
    shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
    added = []
    if nodes.get("added_bytes"):
        added.append(f"{nodes['added_bytes'] / 1e6:.1f} MB to its file")
    if seconds > 0:
        added.append(f"{seconds * 1e3:.2f} ms to its predicted time")
    batches = nodes.get("validation_batches")
    on = (f" (the worst over the example inputs and {batches} validation batch{'' if batches == 1 else 'es'})"
          if isinstance(batches, int) and not isinstance(batches, bool) and batches > 0 else "")
    return (f"{segment} on {target} keeps {len(where)} of its {nodes.get('of', '?')} quantized nodes in fp32 to "
            f"hold its accuracy limit{on}: all in {target.precision} its outputs moved by relative error "
            f"{nodes.get('all_int8_relative_error', float('nan')):.3g}, with these in fp32 "
            f"{nodes.get('relative_error', float('nan')):.3g} ({shown})"
            + (f"; they add {' and '.join(added)}" if added else ""))


def cheaper_targets(problem, assignment, spec, specs, allowed, than: float) -> list[tuple[float, int, tuple]]:
    """Where a segment (``spec``, one of the placement's ``specs``, from ``assignment``) kept nodes
    in fp32 and is dearer for it than the placement thought, the other targets that might run the
    same units for less: (the placement's cost with the segment there, target index, assignment),
    cheapest first, for each target every unit may run on (``allowed``) where that cost is below
    ``than`` (the placement's cost with the seconds the segment's kept nodes add) and the segments
    stay as they are (a target that would merge the segment with a neighbour is left out: the plan
    would not run as priced)."""
    from hetcc.passes.problem import evaluate
    from hetcc.passes.segments import form_segments

    shape = [s.units for s in specs]
    out = []
    for t in range(problem.k):
        if t == spec.target or not all(allowed[u][t] for u in spec.units):
            continue
        trial = list(assignment)
        for u in spec.units:
            trial[u] = t
        cost = evaluate(problem, trial)
        if cost < than and [s.units for s in form_segments(problem, trial)] == shape:
            out.append((cost, t, tuple(trial)))
    return sorted(out)
