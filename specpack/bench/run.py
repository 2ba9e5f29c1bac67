"""Drive ``specpack bench``: every method, every phase, one run, one report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from specpack.bench.methods import Method, parse_methods, specpack_settings, vllm_configs
from specpack.bench.report import decisions_delta, summarise, write
from specpack.bench.workload import by_category, load_workload


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="phase", file=sys.stderr, dynamic_ncols=True)


def fit_to_model(cats: dict, model_path: str) -> tuple[dict, int, dict]:
    """Drop requests longer than the model's context; return (categories, max_model_len, skipped).

    A request needs ``prompt tokens + max_new_tokens`` positions; the model's
    limit is ``max_position_embeddings`` from its config.
    """
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    limit = int(getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", 1 << 30))
    kept: dict = {}
    skipped: dict = {}
    longest = 0
    for cat, reqs in cats.items():
        for r in reqs:
            need = len(tok(r.prompt, add_special_tokens=False).input_ids) + r.max_new_tokens
            if need > limit:
                skipped[cat] = skipped.get(cat, 0) + 1
                continue
            kept.setdefault(cat, []).append(r)
            longest = max(longest, need)
    for cat, n in skipped.items():
        print(f"bench: skipping {n} '{cat}' request(s) longer than the model's "
              f"{limit} positions", file=sys.stderr)
    if not kept:
        raise ValueError(f"no workload request fits the model's {limit} positions")
    return kept, min(limit, longest + 64), skipped


def run_vllm_offline(method: Method, args, cats: dict, max_len: int, workdir: Path,
                     tag: str = "") -> dict:
    spec, extra = vllm_configs(method, args.draft, args.num_speculative_tokens,
                               getattr(args, "policy", None), getattr(args, "datastore", None))
    job = {"model": args.target, "speculative_config": spec, "additional_config": extra,
           "concurrency": args.concurrency, "seed": args.seed, "max_model_len": max_len,
           "categories": {c: [r.__dict__ for r in reqs] for c, reqs in cats.items()}}
    name = method.name.replace(":", "_") + (f"-{tag}" if tag else "")
    if os.environ.get("SPECPACK_POLICY_TRACE", "0") not in ("", "0"):
        job["trace_dir"] = str(workdir / "traces" / name)
    jf, out, log = workdir / f"{name}.job.json", workdir / f"{name}.out.json", workdir / f"{name}.log"
    jf.write_text(json.dumps(job))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "specpack.bench.vllm_worker", "--spec", str(jf),
                            "--out", str(out)], stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"bench: vLLM run for {method.name} failed (log: {log})")
    return json.loads(out.read_text())


def run_hf(method: Method, args, cats: dict, state: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specpack.hf import generate
    from specpack.methods import build_method, loaded_draft_builder
    from specpack.registry import build_pipeline

    if "target" not in state:
        state["tok"] = AutoTokenizer.from_pretrained(args.target)
        state["target"] = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32)
        if args.draft:
            state["draft"] = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32)
    tok, k = state["tok"], args.num_speculative_tokens
    phases = []
    for c in args.concurrency:
        for cat, reqs in cats.items():
            if method.name == "none":
                prop, nodes, depth = None, k, k
            else:
                settings = specpack_settings(method, args.draft, k, getattr(args, "policy", None),
                                             getattr(args, "datastore", None))
                # the draft model is loaded once for every method and phase
                build = (loaded_draft_builder(state["draft"], args.draft) if "draft" in state
                         else build_method)
                nodes = depth = k
                if method.base == "specpack:draft_model" and method.preset is None:
                    nodes = depth = min(k, 4)
                prop = build_pipeline(settings, method=method.base.split(":")[1], max_nodes=nodes,
                                      where=f"bench {method.name}", build=build)
            prompts = [tok(r.prompt, add_special_tokens=False).input_ids for r in reqs]
            mnt = max(r.max_new_tokens for r in reqs)
            res = generate(state["target"], prompts, prop, max_new_tokens=mnt, max_nodes=nodes,
                           max_depth=depth, batch_size=c, seed=args.seed)
            # per-request budgets differ: cut each output to its own max_new_tokens
            outs = [t[: r.max_new_tokens] for t, r in zip(res.tokens, reqs)]
            n_tok = sum(len(t) for t in outs)
            per_tok = res.wall_s * min(c, len(reqs)) / max(1, n_tok)
            phases.append({
                "concurrency": c, "category": cat, "wall_s": res.wall_s, "tau": res.tau,
                "acceptance_by_position": res.acceptance_by_position,
                "spec": {"num_drafts": sum(s.steps for s in res.stats),
                         "num_accepted_tokens": sum(s.accepted for s in res.stats)},
                "requests": [{"tokens": t, "tpot_s": per_tok} for t in outs],
                "decisions": decisions_delta(res.decisions, None) if prop is not None else None,
            })
    return {"phases": phases}


def bench(args) -> dict:
    methods = parse_methods(args.methods, args.engine, args.draft, getattr(args, "datastore", None))
    reqs = load_workload(args.workload)
    cats = by_category(reqs)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="specpack-bench-", dir=out_dir))
    results: dict[str, dict] = {}
    t0 = time.time()
    cats, max_len, skipped = fit_to_model(cats, args.target)
    bar = _progress(len(methods) * len(args.concurrency) * len(cats), f"bench {args.engine}")
    state: dict = {}
    for m in methods:
        bar.set_postfix_str(m.name)
        if args.engine == "hf":
            results[m.name] = run_hf(m, args, cats, state)
            bar.update(len(args.concurrency) * len(cats))
            continue
        # a fresh engine per (method, concurrency): proposer state learned in one
        # phase (e.g. the suffix global cache of outputs) must not leak into the
        # next phase, which replays the same prompts
        phases = []
        for c in args.concurrency:
            one = argparse.Namespace(**{**vars(args), "concurrency": [c]})
            if args.server:
                from specpack.bench.server import run_vllm_server

                phases += run_vllm_server(m, one, cats, max_len, workdir)["phases"]
            else:
                phases += run_vllm_offline(m, one, cats, max_len, workdir, tag=f"c{c}")["phases"]
            bar.update(len(cats))
        results[m.name] = {"phases": phases}
    bar.close()
    rows = summarise(results, {m.name for m in methods if m.builtin})
    meta = {"engine": args.engine + (" (server)" if args.server else ""), "target": args.target,
            "draft": args.draft, "workload": str(args.workload), "seed": args.seed,
            "datastore": getattr(args, "datastore", None), "policy": getattr(args, "policy", None),
            "concurrency": args.concurrency, "methods": [m.name for m in methods],
            "skipped_too_long": skipped, "max_model_len": max_len,
            "num_speculative_tokens": args.num_speculative_tokens,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "wall_s": round(time.time() - t0, 1)}
    doc = write(out_dir, meta, results, rows)
    print((out_dir / "bench.md").read_text())
    print(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}, "
          + ", ".join(str(out_dir / p) for p in doc["plots"]))
    return doc
