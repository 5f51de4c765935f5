"""Generation side by side: time to first token (TTFT), time per output token (TPOT) and tokens/s
of transformers' own ``generate`` in eager PyTorch against hetcc.compile_lm with each CPU runtime
alone for both phases, a split (prefill on one runtime, decode on another), and hetcc's own choice
from all three (tuned). Every contender generates the same greedy tokens, checked each round.

    python benchmarks/bench_generate.py [--family llama] [--rounds 10] [--new 32] [--json out.json]
    python benchmarks/bench_generate.py --reuse [--rounds 10]

``--speculate K`` measures speculative decoding instead: the model with a draft made of its own
first layer (embeddings, one layer, the head: a layer-skip draft), K draft tokens per target call,
against the same model decoding alone; tokens, acceptance rate and TPOT both ways.

``--reuse`` measures prefix reuse instead: requests that share a system prompt (40 of their 48
tokens) and differ in the rest, as an agent's calls do, generated with reuse and without it on the
same compiled model, interleaved; it reports the hit rate and TTFT both ways.

Rounds are interleaved (each round runs every contender once, in turn), so drift on the machine
hits all alike; the table gives medians and the spread (10th to 90th percentile) over rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import llm  # noqa: E402

import hetcc  # noqa: E402

CPU = ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"]
CONTENDERS = {
    "hetcc onnxruntime": dict(targets=["onnxruntime:cpu"], tune="off"),
    "hetcc openvino": dict(targets=["openvino:cpu"], tune="off"),
    "hetcc torch": dict(targets=["torch:cpu"], tune="off"),
    "hetcc split ov->ort": dict(prefill_targets=["openvino:cpu"], decode_targets=["onnxruntime:cpu"], tune="off"),
    "hetcc choice (tuned)": dict(targets=CPU, tune="auto"),
}


class _Clock:
    """A transformers streamer that notes when each token comes out (the first put is the prompt)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def _eager(model, prompt, new):
    clock = _Clock()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, streamer=clock,
                             eos_token_id=None)
    end = time.perf_counter()
    ticks = clock.times[1:]
    steps = [b - a for a, b in zip(ticks, ticks[1:])]
    return out[0, prompt.shape[1]:].tolist(), ticks[0] - start, statistics.median(steps), new / (end - start)


def _hetcc(lm, prompt, new):
    with torch.no_grad():
        out = lm.generate(prompt, new, stop=())
    return out.tokens[0], out.ttft_s, out.tpot_s, out.tokens_per_s


def _spread(values):
    ordered = sorted(values)
    low, high = ordered[int(0.1 * (len(ordered) - 1))], ordered[int(round(0.9 * (len(ordered) - 1)))]
    return statistics.median(values), low, high


def _print_medians(what: str, seconds: dict) -> None:
    for name, values in seconds.items():
        med, low, high = _spread(values)
        print(f"  {what} {name:<11} {med * 1e3:7.2f} ms [{low * 1e3:.2f}-{high * 1e3:.2f}]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llama", choices=llm.FAMILIES)
    parser.add_argument("--size", default="bench", choices=llm.SIZES)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--new", type=int, default=32, help="tokens generated per run")
    parser.add_argument("--only", help="comma-separated contender names to run (default: all)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--reuse", action="store_true", help="measure prefix reuse (see above)")
    parser.add_argument("--speculate", type=int, metavar="K", help="measure speculative decoding (see above)")
    args = parser.parse_args(argv)
    if args.reuse:
        return _reuse(args)
    if args.speculate:
        return _speculate(args)
    torch.set_num_threads(torch.get_num_threads())
    model, (prompt,) = llm.build(args.family, args.size)
    names = list(CONTENDERS) if not args.only else [n.strip() for n in args.only.split(",")]
    runs = {"transformers generate (eager)": lambda: _eager(model, prompt, args.new)}
    compile_seconds = {}
    for name in names:
        start = time.perf_counter()
        lm = hetcc.compile_lm(model, prompt_len=prompt.shape[1], max_new_tokens=args.new, **CONTENDERS[name])
        compile_seconds[name] = time.perf_counter() - start
        where = (sorted({s.target for s in lm.prefill.plan.segments}),
                 sorted({s.target for s in lm.decode.plan.segments}))
        print(f"{name}: compiled in {compile_seconds[name]:.0f} s; prefill on {where[0]}, decode on {where[1]}",
              file=sys.stderr)
        runs[name] = (lambda lm=lm: _hetcc(lm, prompt, args.new))
    for run in runs.values():  # warm-up
        run()
    figures = {name: {"ttft": [], "tpot": [], "tps": []} for name in runs}
    want = None
    for _ in range(args.rounds):
        for name, run in runs.items():
            tokens, ttft, tpot, tps = run()
            want = want or tokens
            if tokens != want:
                raise SystemExit(f"{name} generated different tokens: {tokens} vs {want}")
            figures[name]["ttft"].append(ttft)
            figures[name]["tpot"].append(tpot)
            figures[name]["tps"].append(tps)
    base = {k: statistics.median(figures["transformers generate (eager)"][k]) for k in ("ttft", "tpot", "tps")}
    print(f"{args.family} ({args.size}), prompt {prompt.shape[1]} tokens, {args.new} new, batch 1, fp32, "
          f"{args.rounds} interleaved rounds, {torch.get_num_threads()} threads; median [p10-p90]")
    print(f"{'contender':<32}{'TTFT ms':>24}{'TPOT ms':>24}{'tokens/s':>10}{'TPOT vs eager':>15}")
    table = {}
    for name, f in figures.items():
        ttft, tpot, tps = _spread(f["ttft"]), _spread(f["tpot"]), _spread(f["tps"])
        table[name] = {"ttft_ms": [x * 1e3 for x in ttft], "tpot_ms": [x * 1e3 for x in tpot],
                       "tokens_per_s": tps[0], "compile_s": compile_seconds.get(name)}
        print(f"{name:<32}{ttft[0] * 1e3:>9.2f} [{ttft[1] * 1e3:.2f}-{ttft[2] * 1e3:.2f}]"
              f"{tpot[0] * 1e3:>11.2f} [{tpot[1] * 1e3:.2f}-{tpot[2] * 1e3:.2f}]{tps[0]:>10.0f}"
              f"{tpot[0] / base['tpot']:>14.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"family": args.family, "size": args.size, "rounds": args.rounds,
                                               "new": args.new, "prompt": prompt.shape[1], "table": table},
                                              indent=1))
    return 0


def _speculate(args) -> int:
    import copy

    model, (prompt,) = llm.build(args.family, args.size)
    draft_model = copy.deepcopy(model)
    draft_model.model.layers = draft_model.model.layers[:1]
    draft_model.config.num_hidden_layers = 1
    common = dict(prompt_len=prompt.shape[1], tune="off", targets=["onnxruntime:cpu"])
    lm = hetcc.compile_lm(model, max_new_tokens=args.new, speculate=args.speculate, **common)
    draft = hetcc.compile_lm(draft_model, max_new_tokens=args.new + args.speculate, **common)
    tpot = {"alone": [], "with draft": []}
    rate = []
    for _ in range(args.rounds):
        alone = lm.generate(prompt, args.new, stop=())
        drafted = lm.generate(prompt, args.new, stop=(), draft=draft)
        if alone.tokens != drafted.tokens:
            raise SystemExit(f"speculation changed the tokens: {drafted.tokens} vs {alone.tokens}")
        tpot["alone"].append(alone.tpot_s)
        tpot["with draft"].append(drafted.tpot_s)
        rate.append(drafted.acceptance_rate)
    print(f"{args.family} ({args.size}), prompt {prompt.shape[1]} tokens, {args.new} new, draft: the model's "
          f"first layer, {args.speculate} draft tokens per call, {args.rounds} interleaved rounds; median [p10-p90]")
    print(f"acceptance rate {statistics.median(rate):.2f}; the same tokens both ways")
    _print_medians("TPOT", tpot)
    print(f"  speculative decoding: TPOT {statistics.median(tpot['alone']) / statistics.median(tpot['with draft']):.2f}x lower")
    return 0


def _reuse(args) -> int:
    model, (prompt,) = llm.build(args.family, args.size)
    system = prompt[0, :40].tolist()
    gen = torch.Generator().manual_seed(2)
    vocab = model.config.vocab_size
    lm = hetcc.compile_lm(model, prompt_len=48, max_new_tokens=args.new, prefix_chunk=8,
                          prefill_targets=["openvino:cpu"], decode_targets=["onnxruntime:cpu"], tune="off")
    requests = [system + torch.randint(2, vocab, (8,), generator=gen).tolist() for _ in range(args.rounds + 1)]
    lm.generate([requests[0]], 1)  # the first request of the session: a prefill, stored
    ttft = {"reuse": [], "prefill": []}
    hits = 0
    for req in requests[1:]:
        with_reuse = lm.generate([req], args.new, stop=())
        without = lm.generate([req], args.new, stop=(), reuse=False)
        if with_reuse.tokens != without.tokens:
            raise SystemExit(f"prefix reuse changed the tokens: {with_reuse.tokens} vs {without.tokens}")
        hits += with_reuse.prefix_hits
        ttft["reuse"].append(with_reuse.ttft_s)
        ttft["prefill"].append(without.ttft_s)
    print(f"{args.family} ({args.size}), requests of 48 tokens sharing a 40-token system prompt, "
          f"{args.rounds} requests, interleaved; median [p10-p90]")
    print(f"hit rate {hits}/{args.rounds}; reused {with_reuse.reused_tokens} tokens per hit")
    _print_medians("TTFT with", ttft)
    ratio = statistics.median(ttft["prefill"]) / statistics.median(ttft["reuse"])
    print(f"  prefix reuse: TTFT {ratio:.2f}x lower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
