"""``specpack`` command line: demo, config check, method list."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

def cmd_demo(a: argparse.Namespace) -> None:
    """The embedded default pair through vLLM: specpack suffix vs no speculation
    vs vLLM ngram, as a short bench table, plus one generation of each."""
    from specpack.bench.run import bench
    from specpack.bench.workload import BUILTIN_DIR
    from specpack.models import available, default_target

    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="specpack-demo-"))
    model = a.model
    if model is None:
        if not available():
            raise SystemExit("the embedded default model is missing (specpack/models/default); "
                             "rebuild it with: python -m specpack.models.train")
        model = default_target()
    print(f"target: {model}\nrunning vLLM: no speculation, vLLM ngram, specpack suffix ...",
          flush=True)
    args = argparse.Namespace(
        engine="vllm", target=model, draft=None, methods="specpack:suffix",
        workload=str(BUILTIN_DIR / "demo.jsonl"), concurrency=[1],
        num_speculative_tokens=a.num_speculative_tokens, server=False, seed=0, out=str(workdir))
    doc = bench(args)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    first = doc["raw"]["none"]["phases"][0]
    cat = first["category"]
    from specpack.bench.workload import load_workload

    prompt = next(r.prompt for r in load_workload(args.workload) if r.category == cat)
    print("--- prompt (" + cat + ") ---\n" + prompt)
    for m in ("none", "specpack:suffix"):
        ph = next(p for p in doc["raw"][m]["phases"] if p["category"] == cat)
        print(f"--- output, {m} ---\n" + tok.decode(ph["requests"][0]["tokens"]))
    if not all(r["greedy_match"] for r in doc["rows"]):
        raise SystemExit("outputs differ from no speculation: not lossless")
    print("greedy outputs identical to no speculation for every method and prompt")


def cmd_check_config(a: argparse.Namespace) -> None:
    from specpack.config import ConfigError
    from specpack.vllm_plugins.plugin import validate_engine_args

    try:
        method = validate_engine_args(a.speculative_config, a.additional_config)
    except ConfigError as e:
        raise SystemExit(f"invalid: {e}") from None
    if method is None:
        raise SystemExit("invalid: --speculative-config does not name a specpack proposer "
                         "(model must start with 'specpack.vllm_plugins.')")
    print(f"ok: specpack method '{method}'")


def cmd_methods(a: argparse.Namespace) -> None:
    from specpack.methods import METHODS

    for spec in METHODS.values():
        engines = ["specpack generate (reference runtime)"]
        if spec.vllm_class:
            engines.append(f"vLLM model 'specpack.vllm_plugins.{spec.vllm_class}'")
        if spec.sglang_algorithm:
            engines.append(f"SGLang --speculative-algorithm {spec.sglang_algorithm}")
        print(f"{spec.name} ({spec.family}): {spec.summary}\n  engines: " + "; ".join(engines))
        for name, f in spec.config.model_fields.items():
            if name == "method":
                continue
            print(f"  {name} = {f.default!r}: {f.description or ''}")
    from specpack.config import PolicyConfig

    print("policy (any method, as the 'policy' object inside the specpack settings):")
    for name, f in PolicyConfig.model_fields.items():
        default = f.default if f.default_factory is None else f.default_factory()
        print(f"  {name} = {default!r}: {f.description or ''}")


def cmd_generate(a: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specpack.config import ConfigError, json_object
    from specpack.hf import generate
    from specpack.methods import METHODS
    from specpack.registry import build_pipeline, validate_pipeline

    proposer = None
    try:
        settings = json_object(a.config, "--config")
        if a.method != "none":
            spec = METHODS[a.method]
            for needed, flag, field in ((spec.needs_draft_model, a.draft, "draft_model"),
                                        (spec.needs_datastore, a.datastore, "datastore_path")):
                if needed and flag:
                    settings.setdefault(field, flag)
                elif needed and field not in settings:
                    raise ConfigError(f"--method {a.method} needs --"
                                      f"{'draft' if field == 'draft_model' else 'datastore'} "
                                      f"PATH (or '{field}' in --config)")
            validate_pipeline(settings, method=a.method, max_nodes=a.max_nodes, where="--config")
            proposer = build_pipeline(settings, method=a.method, max_nodes=a.max_nodes,
                                      where="--config")
    except ConfigError as e:
        raise SystemExit(f"invalid: {e}") from None
    tok = AutoTokenizer.from_pretrained(a.target)
    target = AutoModelForCausalLM.from_pretrained(a.target, dtype=torch.float32)
    prompts = [tok(p, add_special_tokens=False).input_ids for p in a.prompt]
    res = generate(target, prompts, proposer, max_new_tokens=a.max_new_tokens,
                   temperature=a.temperature, top_p=a.top_p, seed=a.seed,
                   max_nodes=a.max_nodes, max_depth=a.max_depth)
    for p, out in zip(a.prompt, res.tokens):
        print("--- prompt ---\n" + p)
        print("--- output ---\n" + tok.decode(out))
    print("--- statistics ---")
    print(json.dumps({"method": a.method, **res.summary()}, indent=2))


def cmd_bench(a: argparse.Namespace) -> None:
    from specpack.bench.run import bench
    from specpack.bench.workload import BUILTIN_DIR, WorkloadError

    try:
        a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"invalid: --concurrency {a.concurrency!r}: comma-separated integers") from None
    if not a.concurrency or min(a.concurrency) < 1:
        raise SystemExit("invalid: --concurrency needs integers >= 1")
    if a.target is None:
        from specpack.models import available, default_draft, default_target

        if not available():
            raise SystemExit("invalid: no --target given and the embedded default model is missing")
        a.target, a.draft = default_target(), a.draft or default_draft()
    a.workload = a.workload or str(BUILTIN_DIR / "default.jsonl")
    from specpack.config import ConfigError, json_object

    try:
        a.policy = json_object(a.policy, "--policy") if a.policy else None
    except ConfigError as e:
        raise SystemExit(f"invalid: {e}") from None
    try:
        bench(a)
    except (ValueError, WorkloadError) as e:
        raise SystemExit(f"invalid: {e}") from None


def cmd_datastore(a: argparse.Namespace) -> None:
    """Build a corpus datastore (REST) from files / directories / JSONL."""
    import time

    from transformers import AutoTokenizer

    from specpack.proposers.retrieval.corpus_index import (build_datastore, corpus_files, iter_texts,
                                              tokenize_corpus)

    if a.sort_depth < 1 or a.sort_depth > 64:
        raise SystemExit(f"invalid: --sort-depth {a.sort_depth}: allowed 1..64")
    t0 = time.perf_counter()
    try:
        files = corpus_files(a.input)
    except FileNotFoundError as e:
        raise SystemExit(f"invalid: {e}") from None
    if not files:
        raise SystemExit("invalid: --input names no files")
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    try:
        meta = build_datastore(tokenize_corpus(iter_texts(files), tok), a.out,
                               sort_depth=a.sort_depth, tokenizer=a.tokenizer)
    except ValueError as e:
        raise SystemExit(f"invalid: {e}") from None
    from specpack.proposers.retrieval.corpus_index import Datastore

    size = Datastore(a.out).nbytes_on_disk
    print(json.dumps({"out": a.out, "files": len(files), "documents": meta["num_documents"],
                      "tokens": meta["num_tokens"], "index_bytes": size,
                      "build_s": round(time.perf_counter() - t0, 2)}, indent=1))


def main(argv=None) -> None:
    from specpack.methods import METHODS

    ap = argparse.ArgumentParser(prog="specpack", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="embedded model through vLLM: suffix vs none vs ngram")
    d.add_argument("--model", default=None, help="HF checkpoint dir (default: embedded pair)")
    d.add_argument("--num-speculative-tokens", type=int, default=8)
    d.add_argument("--workdir", default=None)
    d.set_defaults(func=cmd_demo)
    c = sub.add_parser("check-config", help="validate vLLM speculative/additional configs")
    c.add_argument("--speculative-config", required=True)
    c.add_argument("--additional-config", default=None)
    c.set_defaults(func=cmd_check_config)
    g = sub.add_parser("generate", help="speculative decoding on the transformers reference runtime")
    g.add_argument("--target", required=True, help="HF checkpoint dir of the target (with tokenizer)")
    g.add_argument("--draft", default=None, help="HF checkpoint dir of a draft model")
    g.add_argument("--method", default="suffix", choices=["none", *METHODS],
                   help="a specpack method ('specpack methods' lists them) or none")
    g.add_argument("--datastore", default=None, help="datastore dir (specpack datastore build) "
                   "for methods that need one")
    g.add_argument("--config", default=None, help="JSON object of method settings "
                   "(plus an optional 'policy' section)")
    g.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-nodes", type=int, default=8)
    g.add_argument("--max-depth", type=int, default=8)
    g.set_defaults(func=cmd_generate)
    b = sub.add_parser("bench", help="measure methods side by side on one engine, in one run")
    b.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    b.add_argument("--target", default=None, help="HF checkpoint dir (default: embedded pair)")
    b.add_argument("--draft", default=None, help="draft checkpoint dir (enables draft_model methods)")
    b.add_argument("--methods", default="specpack:suffix",
                   help="comma list: none, vllm:ngram, vllm:draft_model, "
                        + ", ".join(f"specpack:{m}" for m in METHODS)
                        + ", each specpack method optionally with a policy "
                        "preset (specpack:suffix@k4, @svip, @threshold, @cumulative, @ema, "
                        "@ucb, @exp3, @thompson, @quota-ucb, @off, +off, @custom); none and "
                        "built-ins are always added")
    b.add_argument("--datastore", default=None, help="datastore dir (specpack datastore build) "
                   "for specpack:datastore, and used by specpack:cascade / specpack:rasd")
    b.add_argument("--policy", default=None, help="JSON policy object for the @custom preset "
                   "(same schema as --additional-config specpack.policy)")
    b.add_argument("--workload", default=None, help="JSONL file (default: built-in workloads)")
    b.add_argument("--concurrency", default="1,16")
    b.add_argument("--num-speculative-tokens", type=int, default=8)
    b.add_argument("--server", action="store_true", help="vLLM: serve and drive with HTTP clients")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default="bench-out")
    b.set_defaults(func=cmd_bench)
    ds = sub.add_parser("datastore", help="corpus datastore for the REST proposer")
    dsub = ds.add_subparsers(dest="ds_cmd", required=True)
    dsb = dsub.add_parser("build", help="tokenize a corpus and build its memory-mapped index")
    dsb.add_argument("--tokenizer", required=True, help="tokenizer (model dir) of the target")
    dsb.add_argument("--input", nargs="+", required=True,
                     help="files, directories (walked for text files) or .jsonl files")
    dsb.add_argument("--out", required=True, help="output directory")
    dsb.add_argument("--sort-depth", type=int, default=16,
                     help="longest lookup the index supports (tokens)")
    dsb.set_defaults(func=cmd_datastore)
    m = sub.add_parser("methods", help="list methods, their vLLM class and settings")
    m.set_defaults(func=cmd_methods)
    a = ap.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
