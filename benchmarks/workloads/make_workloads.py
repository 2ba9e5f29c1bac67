"""Build the built-in bench workloads from this Python's standard library.

    python benchmarks/workloads/make_workloads.py --out specpack/bench/workloads/default.jsonl
    python benchmarks/workloads/make_workloads.py --copy 24 --open 24 --multi 16 --long 0 \
        --mixed mixed --max-new-tokens 48 --out specpack/bench/workloads/batch.jsonl

Each line is ``{"category", "prompt", "max_new_tokens", "source"}`` (the bench
reads the first three and ignores extra keys). Material: CPython 3.11
standard-library sources (PSF licence), cut deterministically:

* ``copy_heavy`` - a function followed by a header asking for it again
  (refactor / re-typed copy), or a module docstring followed by a summary
  header: outputs repeat the prompt;
* ``open_generation`` - the first lines of a function (signature + docstring)
  to be continued, or a docstring-only stub to implement;
* ``multi_turn`` - a first request, the previous answer (the real function
  body), and a follow-up asking for a variant of that answer;
* ``long_context`` - a whole module (about 4K-16K tokens of the default
  tokenizer, ~3.3 characters per token) followed by a request to repeat one
  of its helpers.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import sysconfig


def functions(path: str) -> list[tuple[str, str, str | None]]:
    src = open(path, encoding="utf-8", errors="replace").read()
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    lines = src.splitlines()
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.end_lineno:
            body = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if 6 <= body.count("\n") <= 40:
                out.append((node.name, body, ast.get_docstring(node)))
    return out


def build(n_copy: int, n_open: int, n_multi: int, n_long: int) -> list[dict]:
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    funcs = []
    for f in files:
        for name, body, doc in functions(f):
            funcs.append((os.path.basename(f), name, body, doc))
    rows = []
    step = max(1, len(funcs) // (n_copy + n_open + n_multi + 3))
    picks = funcs[::step]
    it = iter(picks)
    for i in range(n_copy):
        mod, name, body, _ = next(it)
        if i % 2 == 0:
            prompt = (f"# {mod}: original version\n{body}\n\n"
                      f"# {mod}: the same function, reformatted with no change in behaviour\n")
        else:
            prompt = (f"# Code review of {mod}.{name}\n{body}\n\n"
                      f"# Reviewed version with comments on each step\ndef {name}(")
        rows.append({"category": "copy_heavy", "prompt": prompt, "max_new_tokens": 128,
                     "source": f"{mod}:{name}"})
    for i in range(n_open):
        mod, name, body, doc = next(it)
        head = "\n".join(body.splitlines()[:4 if i % 2 == 0 else 2]) + "\n"
        rows.append({"category": "open_generation", "prompt": f"# {mod}\n{head}",
                     "max_new_tokens": 128, "source": f"{mod}:{name}"})
    for i in range(n_multi):
        mod, name, body, _ = next(it)
        first = body.splitlines()[0]
        prompt = (f"# Request 1: implement {name} for {mod}\n{first}\n"
                  + "\n".join(body.splitlines()[1:]) + "\n\n"
                  f"# Request 2: the function above again, renamed to {name}_v2 and with a "
                  f"docstring\ndef {name}_v2(")
        rows.append({"category": "multi_turn", "prompt": prompt, "max_new_tokens": 128,
                     "source": f"{mod}:{name}"})
    targets = [15_000, 27_000, 40_000, 50_000][:n_long]
    big = sorted(((os.path.getsize(f), f) for f in files), reverse=True)
    for chars in targets:
        size, f = next((s, f) for s, f in big if s > chars * 1.2)
        big = [(s, g) for s, g in big if g != f]
        src = open(f, encoding="utf-8", errors="replace").read()[:chars]
        fs = [x for x in functions(f) if x[1] in src]
        name = fs[len(fs) // 2][0] if fs else "main"
        prompt = (f"# File: {os.path.basename(f)} (excerpt)\n{src}\n\n"
                  f"# Repeat the helper `{name}` defined above, unchanged:\ndef {name}(")
        rows.append({"category": "long_context", "prompt": prompt, "max_new_tokens": 64,
                     "source": f"{os.path.basename(f)}[:{chars}]"})
    return rows


def add_output_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--mixed", default=None, metavar="NAME",
                    help="put every prompt in one category NAME (a batch workload: one phase "
                         "keeps all concurrency slots busy)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="override every request's")


def write_workload(rows: list[dict], a: argparse.Namespace) -> list[dict]:
    """Apply ``--mixed`` / ``--max-new-tokens`` and write ``rows`` as JSONL to ``--out``."""
    for r in rows:
        if a.mixed:
            r["source"] = f"{r['category']}/{r['source']}"
            r["category"] = a.mixed
        if a.max_new_tokens:
            r["max_new_tokens"] = a.max_new_tokens
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "specpack", "bench", "workloads", "default.jsonl"))
    ap.add_argument("--copy", type=int, default=8)
    ap.add_argument("--open", type=int, default=8)
    ap.add_argument("--multi", type=int, default=6)
    ap.add_argument("--long", type=int, default=4)
    add_output_options(ap)
    a = ap.parse_args()
    rows = write_workload(build(a.copy, a.open, a.multi, a.long), a)
    print(f"wrote {len(rows)} prompts to {a.out}")


if __name__ == "__main__":
    main()
