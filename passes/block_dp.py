"""The dynamic programme over the topological order that :mod:`hetcc.passes.frontier` runs for
each set of multipliers: blocks between narrow cuts, each solved for every pair of end states,
alike blocks as one numpy batch, and a chain DP over the blocks. docs/placement.md ("Large
graphs") explains it.

The DP walks the nodes in order. Its state holds, for every value still to be read, the location
it was made on and the set of locations it has already been handed to, so a value read by several
nodes is paid once per location, exactly as :func:`~hetcc.passes.problem.evaluate` charges it.

Large models are stacks of alike layers, and between two layers only the residual stream is live.
The order is therefore cut where few values are live; each block between two cuts is solved for
every state of the values crossing its two ends, blocks of the same shape are solved together as
one numpy batch (the layers of a 70B model are 80 rows of one array), and a short chain DP over
the blocks picks the best path. Values live over long stretches (a mask every layer reads) would
multiply the state: they are *relaxed*, charged only a share of their hand-overs, which keeps the
DP's optimum a lower bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hetcc.passes.problem import HOST, PlacementProblem

STATE_BITS = 12.0
"""Most log2-states the live values may take at any point before the longest-lived is relaxed."""

CUT_SLACK_BITS = 2.0
"""A position is a cut when its live state is within this many bits of the narrowest one."""

HANDOVER_CACHE_BYTES = 256 << 20
"""Most bytes the groups of one problem keep of their transitions' hand-over costs between DP
runs (48 MB at 40,000 differing transformer nodes; alike layers are solved once and keep next to
nothing); past it a group computes them again in each run."""

CHUNK_ELEMENTS = 1 << 18
"""Transitions per numpy pass when a group of blocks is solved (see Group.solve)."""


# ---- values and their states -------------------------------------------------------------------


@dataclass(eq=False)
class _Tracked:
    index: int
    producer: int  # node position, or -1 for the host
    consumers: tuple[int, ...]
    share: bool = False
    """Relaxed in part: only its source is tracked, and each reader elsewhere pays its share
    (1/readers) of the hand-over, so a value read on two other targets is under-charged."""

    @property
    def span(self) -> int:
        return self.consumers[-1] - self.producer


class _Codes:
    """State numbering for k targets. A value made by a node: 'fresh' (no reader placed yet) is
    its location s; 'touched' is s * 2**(k-1) + the set of other locations it reached, one bit per
    target other than s. A host value: fresh is 0, touched is the set of targets it reached."""

    def __init__(self, k: int):
        self.k = k
        half = 1 << (k - 1) if k else 1
        self.node_touched = k * half
        self.host_touched = 1 << k
        # Full bit set <-> compressed bits without s's own bit.
        self.squeeze = np.zeros((k, 1 << k), dtype=np.int64)
        self.expand = np.zeros((k, half), dtype=np.int64)
        for s in range(k):
            for full in range(1 << k):
                if full >> s & 1:
                    continue
                low, high = full & ((1 << s) - 1), full >> (s + 1)
                c = low | (high << s)
                self.squeeze[s, full] = c
                self.expand[s, c] = full

    def size(self, host: bool, touched: bool) -> int:
        if host:
            return self.host_touched if touched else 1
        return self.node_touched if touched else self.k

    def read(self, host: bool, touched: bool, state):
        """(location made on, full set reached) for an array of states; host location is k."""
        if host:
            return np.full_like(state, self.k), (state if touched else np.zeros_like(state))
        if not touched:
            return state, np.zeros_like(state)
        half = self.node_touched // self.k
        src = state // half
        return src, self.expand[src, state % half]

    def write(self, host: bool, src, reached):
        if host:
            return reached
        half = self.node_touched // self.k
        return src * half + self.squeeze[src, reached]


def _links(p: PlacementProblem):
    """Seconds per value for every hand-over: (V, k+1, k) from location s (k: host) to target t,
    and (V, k) from target t to the host; as ``PlacementProblem.link`` computes them."""
    k = p.k
    nbytes = np.array([v.nbytes for v in p.values], float)[:, None, None]
    lat = np.asarray(p.link_latency, float)
    bw = np.asarray(p.link_bandwidth, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_byte = np.where(np.isinf(bw), 0.0, 1.0 / bw)
        full = lat[None] + nbytes * per_byte[None] + np.asarray(p.call_overhead, float)[None, None, :]
    same = np.eye(k + 1, dtype=bool)[None]
    full = np.where(same, 0.0, full)
    return full[:, :, :k], full[:, :k, k]


# ---- preparing the problem -----------------------------------------------------------------------


class Prepared:
    """What every DP run shares: tracked and relaxed values, cuts, block groups."""

    def __init__(self, p: PlacementProblem, allowed):
        self.p, n, k = p, p.n, p.k
        self.codes = _Codes(k)
        # allowed: finite cost, and the weights fit the target alone
        ok = np.zeros((n, k), dtype=bool)
        ok[np.repeat(np.arange(n), [len(ts) for ts in allowed]), [t for ts in allowed for t in ts]] = True
        base = np.where(ok, np.asarray(p.cost, float).reshape(n, k), math.inf)
        self.links, home = _links(p)
        values = []
        for j, v in enumerate(p.values):
            if v.to_host and v.producer != HOST:
                base[v.producer] += home[j]
            if v.consumers:
                cons = tuple(sorted(set(v.consumers)))
                values.append(_Tracked(j, v.producer if v.producer != HOST else -1, cons))
        self.relaxed = self._relax(values)
        for v in self.relaxed:
            if v.producer < 0:  # each reader pays its share of the host's hand-over to its target
                share = self.links[v.index, k] / len(v.consumers)
                for c in v.consumers:
                    base[c] += share
            # A node-made relaxed value is charged nothing: the DP does not know its source.
        for v in values:
            if v.share:
                self.links[v.index] /= len(v.consumers)
        self.base = base
        self.tracked = [v for v, on in zip(values, self._live) if on]
        self.cuts = self._cuts()
        self.blocks, self.groups = self._group()

    @property
    def charged_in_part(self) -> int:
        """Values whose hand-overs the DP charges only in part (relaxed, or tracked at the source
        only): 0 where it is exact (``Answer.relaxed``)."""
        return len(self.relaxed) + sum(v.share for v in self.tracked)

    def _bits(self, live: np.ndarray) -> np.ndarray:
        """log2 of the live states at each cut position 0..n (a cut before node p), counting the
        values where ``live`` (a mask over the values of _relax) is set."""
        n, c = self.p.n, self.codes
        d = np.zeros(n + 2)
        prod, first, last, many = (a[live] for a in self._spans)
        if not len(prod):
            return d[: n + 1]
        host = prod < 0
        touch = ~self._share[live] & many
        fresh = np.where(host, 0.0, math.log2(c.k))
        touched = np.where(touch, np.where(host, float(c.k), math.log2(c.node_touched)), fresh)
        # Live at positions producer+1 .. last reader+1; touched from its first reader on.
        np.add.at(d, prod + 1, fresh)
        np.add.at(d, first + 1, touched - fresh)
        np.add.at(d, last + 1, -touched)
        return np.cumsum(d)[: n + 1]

    def _relax(self, values) -> list:
        """Relax values until the state fits STATE_BITS everywhere: in each stretch of positions
        over the limit, the value live across its widest point the longest goes first to its
        source alone (``share``), then wholly (a host value goes straight to wholly). Leaves
        ``_live``, the mask of the values still tracked."""
        prod = np.array([v.producer for v in values], dtype=np.int64)
        last = np.array([v.consumers[-1] for v in values], dtype=np.int64)
        self._spans = (prod, np.array([v.consumers[0] for v in values], dtype=np.int64), last,
                       np.array([len(v.consumers) > 1 for v in values], dtype=bool))
        self._share = np.zeros(len(values), dtype=bool)
        live = np.ones(len(values), dtype=bool)
        span = last - prod
        relaxed = []
        while True:
            bits = self._bits(live)
            over = bits > STATE_BITS
            if not over.any():
                self._live = live
                return relaxed
            # Widest point of each stretch of consecutive positions over the limit.
            edges = np.flatnonzero(np.diff(np.concatenate([[0], over.astype(np.int8), [0]])))
            worst = [int(lo + np.argmax(bits[lo:hi])) for lo, hi in zip(edges[::2], edges[1::2])]
            chosen = {}
            for w in worst:
                here = np.flatnonzero(live & (prod < w) & (last >= w))
                chosen[int(here[np.argmax(span[here])])] = True
            for i in chosen:
                v = values[i]
                if not v.share and v.producer >= 0 and len(v.consumers) > 1:
                    v.share = self._share[i] = True
                else:
                    relaxed.append(v)
                    live[i] = False

    def _cuts(self) -> list[int]:
        bits = self._bits(self._live)
        n = self.p.n
        inner = bits[1:n]
        limit = (inner.min() if len(inner) else 0.0) + CUT_SLACK_BITS
        return [0] + (np.flatnonzero(bits[1:n] <= limit + 1e-9) + 1).tolist() + [n]

    def _group(self):
        self.tracked_by_order = sorted(self.tracked, key=lambda v: (v.producer, v.index))
        reads: dict[int, list[_Tracked]] = {}
        made: dict[int, list[_Tracked]] = {}
        for v in self.tracked_by_order:
            for c in v.consumers:
                reads.setdefault(c, []).append(v)
            if v.producer >= 0:
                made.setdefault(v.producer, []).append(v)
        # Live values at each cut, in one sweep (insertion order is the frontier order).
        frontier_cache, live, pending, r = {}, {}, self.tracked_by_order, 0
        for cut in self.cuts:
            while r < len(pending) and pending[r].producer + 1 <= cut:
                live[pending[r].index] = pending[r]
                r += 1
            for j in [j for j, v in live.items() if v.consumers[-1] < cut]:
                del live[j]
            frontier_cache[cut] = list(live.values())
        blocks, groups = [], {}
        for a, e in zip(self.cuts, self.cuts[1:]):
            entry, exit_ = frontier_cache[a], frontier_cache[e]
            slot = {v.index: ("in", r) for r, v in enumerate(entry)}
            steps, read_values = [], []
            for i in range(a, e):
                got = reads.get(i, ())
                ins = tuple((slot.get(v.index), v.share, v.consumers[-1] == i) for v in got)
                outs = made.get(i, ())
                for r, v in enumerate(outs):
                    slot[v.index] = ("made", i - a, r)
                steps.append((ins, tuple(range(len(outs)))))
                read_values.append([v.index for v in got])
            sig = (tuple((v.producer < 0, not v.share and v.consumers[0] < a) for v in entry),
                   tuple(slot[v.index] for v in exit_), tuple(steps))
            g = groups.get(sig)
            if g is None:
                g = groups[sig] = Group(sig, self.codes)
            blocks.append((g, len(g.members)))
            g.members.append((a, read_values))
        resident = np.asarray(self.p.held_rows(), float).reshape(self.p.n, self.p.k)
        room = [HANDOVER_CACHE_BYTES]
        for g in groups.values():
            g.dedupe(self.base, resident, self.links)
            g.room = room
        # per group: where its blocks lie in the chain (its members in order)
        at: dict[int, list[int]] = {}
        for b, (g, _) in enumerate(blocks):
            at.setdefault(id(g), []).append(b)
        for g in groups.values():
            g.positions = np.array(at[id(g)], dtype=np.int64)
            g.member_starts = np.array([a for a, _ in g.members], dtype=np.int64)
        return blocks, list(groups.values())


# ---- one group of alike blocks, solved as a batch ------------------------------------------------


class Group:
    def __init__(self, sig, codes: _Codes):
        self.sig, self.codes = sig, codes
        self.members: list = []
        self._plan = None
        self._paid = {}
        self.room = [HANDOVER_CACHE_BYTES]  # bytes left to keep, shared by the groups of a problem

    def dedupe(self, base, resident, links) -> None:
        """Blocks with equal costs, weights and links (the layers of one model) are solved once."""
        seen: dict[bytes, int] = {}
        self.unique, self.row_of = [], []
        for m in self.members:
            a, reads = m
            e = a + len(reads)
            vals = [j for r in reads for j in r]
            key = b"".join((base[a:e].tobytes(), resident[a:e].tobytes(), links[vals].tobytes()))
            if key not in seen:
                seen[key] = len(self.unique)
                self.unique.append(m)
            self.row_of.append(seen[key])
        self.row_of = np.array(self.row_of)
        self.starts = np.array([a for a, _ in self.unique], dtype=np.int64)
        # reads[j][slot]: per distinct block, the value its j-th node reads in that slot
        self.reads = [[np.array([reads[j][s] for _, reads in self.unique], dtype=np.int64)
                       for s in range(len(self.unique[0][1][j]))] for j in range(len(self.unique[0][1]))]

    def plan(self):
        """The transition tables, built once: (steps, initial states, s_in, s_out), each step
        (p_idx, t_idx, table, pays). Only states reachable from the block's entry are numbered:
        a state repeats the entry state it came from (the transfer tensor is indexed by it) and
        the touched values' sets grow one reader at a time, so most of the full product of the
        axes cannot occur (13 of 14 transitions at 40k transformer nodes). Each step's pre states
        are the previous step's reachable post states; the last step keeps the full
        (s_in, s_out) layout of the transfer tensor."""
        if self._plan is not None:
            return self._plan
        c, k = self.codes, self.codes.k
        entry_kinds, exit_slots, steps = self.sig
        # An open axis: (slot key, host?, touched?)
        axes = [(("in", r), host, touched) for r, (host, touched) in enumerate(entry_kinds)]
        s_in = int(np.prod([c.size(h, t) for _, h, t in axes])) if axes else 1
        reach = np.zeros(s_in * s_in, dtype=bool)  # at the entry, the axes spell the entry state
        reach[np.arange(s_in) * (s_in + 1)] = True
        initial = s_in
        plan = []
        for j, (ins, outs) in enumerate(steps):
            dims = [s_in] + [c.size(h, t) for _, h, t in axes]
            grid = np.unravel_index(np.flatnonzero(reach), dims)
            live = len(grid[0])
            p_idx = np.repeat(np.arange(live), k)
            t_idx = np.tile(np.arange(k), live)
            new_axes, new_states, pays = [], [grid[0][p_idx]], []
            reading = {key: (share, last) for key, share, last in ins}
            for a, (key, host, touched) in enumerate(axes):
                state = grid[a + 1][p_idx]
                if key not in reading:
                    new_axes.append((key, host, touched))
                    new_states.append(state)
                    continue
                share, last = reading[key]
                src, reached = c.read(host, touched, state)
                pay = (src != t_idx) & ((reached >> t_idx) & 1 == 0)
                # where in the value's flattened hand-over costs each transition reads
                pays.append((len(pays), np.where(pay, src * k + t_idx, (k + 1) * k)))
                if last:
                    continue
                if share:  # only its source is tracked; its links were scaled to the share
                    new_axes.append((key, host, touched))
                    new_states.append(state)
                    continue
                reached = np.where(src != t_idx, reached | (1 << t_idx), reached)
                new_axes.append((key, host, True))
                new_states.append(c.write(host, src, reached))
            for r in outs:
                new_axes.append((("made", j, r), False, False))
                new_states.append(t_idx)
            post_dims = [s_in] + [c.size(h, t) for _, h, t in new_axes]
            q = np.ravel_multi_index(tuple(new_states), post_dims)
            post = int(np.prod(post_dims))
            reach = np.zeros(post, dtype=bool)
            reach[q] = True
            if j < len(steps) - 1:  # number the reachable post states only
                q = (np.cumsum(reach) - 1)[q]
                post = int(reach.sum())
            order = np.argsort(q, kind="stable")
            counts = np.bincount(q, minlength=post)
            width = max(int(counts.max()), 1)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            qs = q[order]
            table = np.full((post, width), len(q), dtype=np.int64)
            table[qs, np.arange(len(q)) - starts[qs]] = order
            plan.append((p_idx, t_idx, table, pays))
            axes = new_axes
        keys = [key for key, _, _ in axes]
        assert tuple(keys) == exit_slots, (keys, exit_slots)
        s_out = int(np.prod([c.size(h, t) for _, h, t in axes])) if axes else 1
        self._plan = (plan, initial, s_in, s_out)
        return self._plan

    def solve(self, node_cost: np.ndarray, links: np.ndarray, scale=None):
        """Transfer tensors (B, s_in, s_out) and the back-pointers to recover each block's nodes,
        for the distinct blocks; ``scale[t]`` multiplies the hand-overs into target t (None: 1).
        Batches are cut into chunks small enough for the CPU's caches: one pass over a 250 MB
        temporary costs more than forty over 6 MB ones."""
        plan, _, s_in, s_out = self.plan()
        b = len(self.unique)
        widest = max((len(step[0]) for step in plan), default=1)
        chunk = max(1, CHUNK_ELEMENTS // widest)
        parts = [self._solve_rows(np.arange(lo, min(lo + chunk, b)), node_cost, links, scale)
                 for lo in range(0, b, chunk)]
        tensors = np.concatenate([t for t, _ in parts]).reshape(b, s_in, s_out)
        backs = [None if parts[0][1][j] is None else np.concatenate([bk[j] for _, bk in parts])
                 for j in range(len(plan))]
        return tensors, backs

    def _solve_rows(self, rows, node_cost, links, scale=None):
        plan, initial, _, _ = self.plan()
        k = self.codes.k
        b = len(rows)
        starts = self.starts[rows]
        arr = np.zeros((b, initial))
        backs = []
        for j, (p_idx, t_idx, table, pays) in enumerate(plan):
            live = len(p_idx) // k
            # transitions are (state, target) pairs in order: the node's cost is broadcast
            cand = np.empty((b, len(p_idx) + 1))
            grid = cand[:, :-1].reshape(b, live, k)
            np.add(arr[:, :, None], node_cost[starts + j][:, None, :], out=grid)
            if pays:
                paid = self._handovers(rows, j, pays, links)
                if scale is None:
                    cand[:, :-1] += paid
                else:  # each transition's hand-overs go into its own target (inf stays inf at 0)
                    paid = paid.reshape(b, live, k)
                    with np.errstate(invalid="ignore"):
                        grid += np.where(np.isinf(paid), paid, paid * scale)
            cand[:, -1] = math.inf
            picked = cand[:, table]
            if table.shape[1] == 1:
                arr, best = picked[:, :, 0], None
            else:
                best = picked.argmin(axis=2)
                arr = np.take_along_axis(picked, best[:, :, None], axis=2)[:, :, 0]
                best = best.astype(np.int16)
            backs.append(best)
        return arr, backs

    def _handovers(self, rows, j: int, pays, links) -> np.ndarray:
        """``_paid`` for the DP's chunk ``rows``. Multipliers change node costs only (the
        bottleneck's mu scales these afterwards), so this is the same in every DP run: kept
        while the problem's HANDOVER_CACHE_BYTES last."""
        key = (int(rows[0]), j)
        if key in self._paid:
            return self._paid[key]
        total = self._paid_by(rows, j, pays, links)
        if self.room[0] >= total.nbytes:
            self.room[0] -= total.nbytes
            self._paid[key] = total
        return total

    def _paid_by(self, rows, j: int, pays, links) -> np.ndarray:
        """(rows, transitions): what each transition of step j pays for the values it reads."""
        total = np.zeros((len(rows), len(pays[0][1])))
        for slot, idx in pays:
            total += self._links_of(rows, j, slot, links)[:, idx]
        return total

    def _links_of(self, rows, j: int, slot: int, links) -> np.ndarray:
        """(rows, (k+1) k + 1): the hand-over costs of the value step j reads in ``slot`` (from
        each of k+1 sources to each of k targets), then 0 for no hand-over; a pay's index
        points into it."""
        k = self.codes.k
        flat = np.zeros((len(rows), (k + 1) * k + 1))
        flat[:, :-1] = links[self.reads[j][slot][rows]].reshape(len(rows), -1)
        return flat

    def _walk_back(self, backs, q, rows, clamp: bool):
        """From the end-state pairs ``q`` (s_in * s_out + s_out) of the distinct blocks ``rows``
        back through the steps, last first: yields (step, transition taken). ``clamp``: pairs no
        path reaches point at the padding; they are moved onto a real transition (their costs
        are inf, what they add does not matter)."""
        plan = self.plan()[0]
        for j in range(len(plan) - 1, -1, -1):
            p_idx, t_idx, table, _ = plan[j]
            m = table[q, 0] if backs[j] is None else table[q, backs[j][rows, q]]
            if clamp:
                m = np.minimum(m, len(t_idx) - 1)
            yield j, m
            q = p_idx[m]

    def _every_pair(self):
        """(q, rows) for ``_walk_back`` over every distinct block and pair of end states."""
        _, _, si, so = self.plan()
        return np.broadcast_to(np.arange(si * so), (len(self.unique), si * so)), np.arange(len(self.unique))[:, None]

    def usage(self, backs, weights: np.ndarray) -> np.ndarray:
        """(U, s_in, s_out, C): per distinct block and pair of end states, what its best inner
        placement puts against each capacity; ``weights[i, t, c]`` is node i's share on t."""
        plan, _, si, so = self.plan()
        total = np.zeros((len(self.unique), si * so, weights.shape[2]))
        for j, m in self._walk_back(backs, *self._every_pair(), clamp=True):
            total += weights[(self.starts + j)[:, None], plan[j][1][m]]
        return total.reshape(len(self.unique), si, so, -1)

    def busy(self, backs, base: np.ndarray, links: np.ndarray) -> np.ndarray:
        """(U, s_in, s_out, k): per distinct block and pair of end states, the seconds its best
        inner placement keeps each target busy, as the DP counts them: each node's ``base`` cost
        and the hand-overs it receives go to its own target (``stage_seconds``'s rule)."""
        plan, _, si, so = self.plan()
        u, k = len(self.unique), self.codes.k
        q, rows = self._every_pair()
        total = np.zeros((u, si * so, k))
        for j, m in self._walk_back(backs, q, rows, clamp=True):
            _, t_idx, _, pays = plan[j]
            t = t_idx[m]
            here = base[(self.starts + j)[:, None], t]
            for slot, idx in pays:
                here = here + self._links_of(np.arange(u), j, slot, links)[rows, idx[m]]
            total += np.where(t[:, :, None] == np.arange(k), here[:, :, None], 0.0)
        return total.reshape(u, si, so, k)

    def recover(self, backs, s_in: np.ndarray, s_out: np.ndarray, out: np.ndarray, members) -> None:
        """Write the node targets of the blocks ``members`` (indices into this group) into
        ``out`` given their chosen end states."""
        plan, _, _, so = self.plan()
        starts = self.member_starts[members]
        for j, m in self._walk_back(backs, s_in * so + s_out, self.row_of[members], clamp=False):
            out[starts + j] = plan[j][1][m]


# ---- the whole graph -----------------------------------------------------------------------------


def run_dp(prep: Prepared, node_cost: np.ndarray, scale=None):
    """DP optimum under ``node_cost`` (hand-overs into target t times ``scale[t]``), the
    assignment reaching it, the solved groups, and the end states of each block on the best
    path."""
    solved = {id(g): g.solve(node_cost, prep.links, scale) for g in prep.groups}
    vec = np.zeros(1)
    args = []
    for g, r in prep.blocks:
        t = solved[id(g)][0][g.row_of[r]]
        total = vec[:, None] + t
        arg = total.argmin(axis=0)
        vec = total[arg, np.arange(total.shape[1])]
        args.append(arg)
    best = float(vec.min()) if vec.size else 0.0
    if not math.isfinite(best):
        return best, None, solved, None
    ends = np.zeros((len(prep.blocks), 2), dtype=np.int64)
    s = int(vec.argmin())
    for b in range(len(prep.blocks) - 1, -1, -1):
        ends[b] = (int(args[b][s]), s)
        s = ends[b][0]
    return best, assign(prep, [solved], np.zeros(len(prep.blocks), dtype=np.int64), ends), solved, ends


def assign(prep: Prepared, runs, pick, ends) -> tuple[int, ...]:
    """The nodes' targets when block b runs from end state ends[b, 0] to ends[b, 1] along the
    inner placements of the DP run ``runs[pick[b]]`` (each run's solved groups)."""
    out = np.zeros(prep.p.n, dtype=np.int64)
    for g in prep.groups:
        picks = pick[g.positions]
        for v in np.unique(picks):
            members = np.flatnonzero(picks == v)
            at = g.positions[members]
            g.recover(runs[v][id(g)][1], ends[at, 0], ends[at, 1], out, members)
    return tuple(out.tolist())
