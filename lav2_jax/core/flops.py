"""FLOPs of a compiled program, counted in its HLO; HBM per TPU chip (docs/design.md §8, §9).

Compiled FLOPs. XLA's `cost_analysis()` counts a while loop's body once, so a scanned 32-layer model reports the
FLOPs of one layer (and one loss chunk, one micro-batch, one CLIP block). `hlo_flops` reads the compiled (SPMD
partitioned, per-chip) HLO text instead: every `dot` / `convolution` (TPU lowers matmuls to convolutions) costs
2 × output elements × contracted size, and every computation is weighted by how often it runs — a while body by
its trip count, fusions and calls once per call. The trip count comes from the loop's counter: start (the initial
tuple's constant), step (the constant the body adds) and bound (the constant the condition compares with), so the
SPMD partitioner's windowed-einsum loops (FSDP all-gather / reduce-scatter matmuls: a u32 counter stepping by 2,
two weight shards per iteration) count as often as they run, like the scans (s32 counters stepping by 1). The
counter is followed through `copy` / `bitcast`: in big programs XLA moves loop counters to scalar memory with a copy
(`add(copy(counter), 2)`), and a loop read by its bound alone would count each windowed matmul twice.
Only matrix products are counted (elementwise work is a few percent at LLaMA sizes); Pallas kernels
(`tpu_custom_call`, e.g. the splash attention) are invisible to it and reported as `custom_calls`.
The analytic counterpart (FLOPs derived from the model's shapes) is `lav2_jax.model.flops`.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

_COMP = re.compile(r"^(ENTRY )?%(\S+) \(")
_INST = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_SHAPE = re.compile(r"^\(?[a-z0-9]+\[([\d,]*)\]")
_CALLS = re.compile(r"(?:calls|to_apply|body)=%([^\s,)]+)")
_MULTI = re.compile(r"(?:branch_computations|called_computations)=\{([^}]*)\}")
_SCALAR_INT = re.compile(r"^[su](?:32|64)\[\]")


def _dims(type_str: str):
    m = _SHAPE.match(type_str)
    if m is None:
        return None
    return [int(x) for x in m.group(1).split(",") if x]


def _operands(rest: str) -> list[str]:
    depth, cur, out = 0, "", []
    for ch in rest:
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                break
            depth -= 1
        cur += ch
    for part in cur.split(","):
        m = re.search(r"%([^\s,)]+)", part)
        if m:
            out.append(m.group(1))
    return out


def _op_flops(op: str, out: list[int], rest: str, shapes: dict) -> float:
    args = _operands(rest)
    if op == "dot":
        lhs = shapes.get(args[0]) if args else None
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        if lhs is None or m is None:
            return 0.0
        contracted = int(np.prod([lhs[int(i)] for i in m.group(1).split(",") if i] or [1]))
        return 2.0 * float(np.prod(out or [1])) * contracted
    lhs = shapes.get(args[0]) if args else None
    rhs = shapes.get(args[1]) if len(args) > 1 else None
    m = re.search(r"dim_labels=([^_]+)_([^-]+)->", rest)
    if lhs is None or rhs is None or m is None or "i" not in m.group(2):
        return 0.0
    lhs_labels, rhs_labels = m.group(1), m.group(2)
    contracted = rhs[rhs_labels.index("i")]
    # Batched matmuls lower to convolutions whose window runs over a batch dim (dilated or padded so that one tap
    # per output meets a real input): a spatial dim contributes at most ceil(size / dilation) taps, and never more
    # than the input's extent along it.
    w = re.search(r"window=\{size=([\dx]+)", rest)
    d = re.search(r"lhs_dilate=([\dx]+)", rest)
    sizes = [int(x) for x in w.group(1).split("x")] if w else []
    dil = [int(x) for x in d.group(1).split("x")] if d else [1] * len(sizes)
    taps = 1
    for k, (size, dl) in enumerate(zip(sizes, dil)):
        extent = lhs[lhs_labels.index(str(k))] if str(k) in lhs_labels else size
        taps *= min(-(-size // max(dl, 1)), extent)
    return 2.0 * float(np.prod(out or [1])) * contracted * taps


def _tuple_index(rest: str) -> int | None:
    m = re.search(r"index=(\d+)", rest)
    return int(m.group(1)) if m else None


def _through_copies(name: str, insts: dict) -> str:
    """The instruction behind a chain of `copy` / `bitcast` (XLA copies loop counters between memory spaces, e.g.
    into scalar memory, when it is short of room elsewhere)."""
    while insts.get(name, ("",))[0] in ("copy", "bitcast"):
        name = (_operands(insts[name][1]) or [""])[0]
    return name


def _trip_count(cond: str, body: str, init: str, roots: dict, insts: dict, values: dict) -> int | None:
    """Iterations of a counted while loop: its condition compares tuple element k with a constant bound, its body
    adds a constant step to element k, and element k of the initial tuple is a constant (through copies). SPMD
    windowed einsums count a u32 counter by 2 (two shards per iteration); scans count an s32 by 1. None: not such
    a loop."""
    op, rest = insts.get(roots.get(cond, ""), ("", ""))
    d = re.search(r"direction=(\w+)", rest)
    args = _operands(rest)
    if op != "compare" or d is None or len(args) != 2:
        return None
    direction, args = d.group(1), [_through_copies(a, insts) for a in args]
    if args[0] in values:  # constant on the left: flip the comparison
        args, direction = args[::-1], {"GT": "LT", "GE": "LE", "LT": "GT", "LE": "GE"}.get(direction, direction)
    if args[1] not in values or insts.get(args[0], ("",))[0] != "get-tuple-element" or direction not in ("LT", "LE"):
        return None
    k, bound = _tuple_index(insts[args[0]][1]), values[args[1]] + (direction == "LE")
    body_op, body_rest = insts.get(roots.get(body, ""), ("", ""))
    outs = _operands(body_rest)
    step_add = _through_copies(outs[k], insts) if body_op == "tuple" and k is not None and k < len(outs) else ""
    if insts.get(step_add, ("",))[0] != "add":
        return None
    add_args = [_through_copies(a, insts) for a in _operands(insts[step_add][1])]
    steps = [values[a] for a in add_args if a in values]
    loops_back = [a for a in add_args if insts.get(a, ("",))[0] == "get-tuple-element"
                  and _tuple_index(insts[a][1]) == k]
    init_op, init_rest = insts.get(init, ("", ""))
    start = None
    if init_op == "tuple" and k < len(_operands(init_rest)):
        start = _through_copies(_operands(init_rest)[k], insts)
    if len(steps) != 1 or steps[0] <= 0 or not loops_back or start not in values:
        return None
    return max(0, -(-(bound - values[start]) // steps[0]))


def hlo_flops(hlo_text: str) -> dict:
    """Matmul FLOPs per chip of a compiled program's HLO text (`compiled.as_text()`), loops counted in full.

    Returns {"flops": per-chip FLOPs, "custom_calls": Pallas (tpu_custom_call) kernels executed (uncounted),
    "loops": {body computation: trip count}, "guessed_loops": bodies whose counter was not recognised, counted as
    often as the one positive constant in their condition (an over-count when the counter steps by more than 1)}."""
    comps: list[str] = []
    entry = None
    shapes: dict[str, list[int]] = {}
    own: dict[str, float] = defaultdict(float)
    customs: dict[str, int] = defaultdict(int)
    edges: dict[str, list[tuple[str, int]]] = defaultdict(list)
    whiles: list[tuple[str, str, str, str]] = []  # (caller, condition, body, initial tuple)
    constants: dict[str, list[int]] = defaultdict(list)
    insts: dict[str, tuple[str, str]] = {}  # instruction name → (opcode, operands and attributes)
    values: dict[str, int] = {}  # integer scalar constants by name
    roots: dict[str, str] = {}
    current = None
    for line in hlo_text.splitlines():
        m = _COMP.match(line)
        if m:
            current = m.group(2)
            comps.append(current)
            if m.group(1):
                entry = current
            continue
        m = _INST.match(line)
        if m is None or current is None:
            continue
        name, type_str, op, rest = m.groups()
        insts[name] = (op, rest)
        if line.lstrip().startswith("ROOT "):
            roots[current] = name
        dims = _dims(type_str)
        if dims is not None:
            shapes[name] = dims
        if op in ("dot", "convolution"):
            own[current] += _op_flops(op, dims or [], rest, shapes)
        elif op == "custom-call" and 'custom_call_target="tpu_custom_call"' in rest:  # Pallas / Mosaic kernels
            customs[current] += 1
        elif op == "constant" and _SCALAR_INT.match(type_str):  # loop bounds: s32, or u32 in windowed einsums
            c = re.match(r"(-?\d+)\)", rest)
            if c:
                constants[current].append(int(c.group(1)))
                values[name] = int(c.group(1))
        if op == "while":
            cond = re.search(r"condition=%([^\s,]+)", rest).group(1)
            body = re.search(r"body=%([^\s,]+)", rest).group(1)
            whiles.append((current, cond, body, (_operands(rest) or [""])[0]))
            continue
        for callee in _CALLS.findall(rest):
            edges[current].append((callee, 1))
        for group in _MULTI.findall(rest):
            for callee in re.findall(r"%([^\s,]+)", group):
                edges[current].append((callee, 1))
    loops, guessed = {}, []
    for caller, cond, body, init in whiles:
        trips = _trip_count(cond, body, init, roots, insts, values)
        if trips is None:  # not a counted loop we recognise: the one positive bound in its condition, else 1
            bounds = [c for c in constants.get(cond, []) if c > 0]
            trips = bounds[0] if len(bounds) == 1 else 1
            guessed.append(body)
        loops[body] = trips
        edges[caller].append((body, loops[body]))
    mult: dict[str, float] = defaultdict(float)
    mult[entry] = 1.0
    for comp in reversed(comps):  # HLO text lists callees before their callers
        for callee, factor in edges.get(comp, ()):
            mult[callee] += mult[comp] * factor
    flops = sum(own[c] * mult[c] for c in own)
    custom = int(sum(customs[c] * mult[c] for c in customs))
    return {"flops": flops, "custom_calls": custom, "loops": loops, "guessed_loops": guessed}


# HBM per chip (GiB) by TPU generation, the name before ':' in a topology (public TPU specifications).
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5litepod": 16.0, "v5p": 95.0, "v6e": 32.0}


def hbm_gib(topology: str) -> float:
    """HBM per chip of a topology name such as `v5e:2x4` (0 when unknown)."""
    return HBM_GIB.get(topology.split(":")[0].lower(), 0.0)
