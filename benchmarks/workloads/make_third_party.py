"""A second bench workload, from third-party Python packages installed here.

    python benchmarks/workloads/make_third_party.py --out /tmp/third_party.jsonl
    specpack bench --workload /tmp/third_party.jsonl ...

Policies are developed on one workload and judged on another (the built-in
one is CPython standard-library code, which the shared stdlib models were
trained on). This one is code the models have never seen: functions of
pure-Python packages that happen to be installed next to vLLM (requests,
jinja2, click, httpx, networkx, ... - whichever of :data:`PACKAGES` import),
cut deterministically, in three categories:

* ``complete`` - a function's signature, docstring and first lines, to be
  continued (the model writes the body);
* ``edit`` - a function followed by an instruction to edit it (rename,
  add type hints, add logging, convert to a method) and the start of the
  edited version: most of the answer repeats the prompt with changes;
* ``long`` - a file excerpt of 2,500-3,800 tokens of the shared tokenizer
  (11,000 characters) followed by a request to
  repeat one of its functions, unchanged or with one change.

Nothing of these packages is stored in the repository: the file is written
where ``--out`` says, from the installed sources, and lists its sources
(package, file, function) so a run can be traced back. The same package
versions give the same file.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_workloads import add_output_options, write_workload  # noqa: E402  (same folder)

#: pure-Python packages commonly installed next to vLLM (first ones present are used)
PACKAGES = ("requests", "urllib3", "idna", "jinja2", "click", "httpx", "httpcore", "anyio",
            "starlette", "fastapi", "networkx", "sympy", "packaging", "filelock", "fsspec",
            "huggingface_hub", "jsonschema", "yaml", "dateutil", "attr", "lark", "openai",
            "aiohttp", "tqdm", "pydantic", "markdown_it", "pygments", "rich")
EDITS = ("rename it to {name}_v2 and its variables to longer, descriptive names",
         "add type hints to every argument and the return value",
         "add a logging.debug call at the start that records its arguments",
         "make it a method of a class named {cls}Helper (add self)")


def package_files(name: str) -> list[str]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return []
    root = os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin
    if os.path.isfile(root):
        return [root]
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith(("_", "test")) and x != "tests")
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".py")]
    return out


def functions(path: str) -> list[tuple[str, str]]:
    """(name, source) of top-level and class-level functions of 8-40 lines."""
    with open(path, encoding="utf-8", errors="replace") as f:
        src = f.read()
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return []
    lines = src.splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
            body = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if 8 <= body.count("\n") <= 40 and not node.name.startswith("__"):
                indent = len(body) - len(body.lstrip())
                out.append((node.name, "\n".join(x[indent:] for x in body.splitlines())))
    return out


def build(n_complete: int, n_edit: int, n_long: int, long_chars: int) -> list[dict]:
    funcs, files = [], []
    for pkg in PACKAGES:
        for f in package_files(pkg):
            rel = f"{pkg}/{os.path.basename(f)}"
            files.append((os.path.getsize(f), rel, f))
            funcs += [(rel, name, body) for name, body in functions(f)]
    if len(funcs) < n_complete + n_edit:
        raise SystemExit(f"only {len(funcs)} functions found in {PACKAGES}")
    step = len(funcs) // (n_complete + n_edit)
    picks = iter(funcs[::step])
    rows = []
    for i in range(n_complete):
        rel, name, body = next(picks)
        lines = body.splitlines()
        head = "\n".join(lines[: max(2, min(len(lines) // 3, 8))]) + "\n"
        rows.append({"category": "complete", "prompt": f"# {rel}\n{head}",
                     "max_new_tokens": 128, "source": f"{rel}:{name}"})
    for i in range(n_edit):
        rel, name, body = next(picks)
        edit = EDITS[i % len(EDITS)].format(name=name, cls=name.title().replace("_", ""))
        first = body.splitlines()[0]
        start = first.replace(f"def {name}(", f"def {name}_v2(") if i % 4 == 0 else first
        prompt = (f"# {rel}\n{body}\n\n# Edit the function above: {edit}.\n"
                  f"# Edited version:\n{start}\n")
        rows.append({"category": "edit", "prompt": prompt, "max_new_tokens": 128,
                     "source": f"{rel}:{name}"})
    big = sorted((s, rel, f) for s, rel, f in files if s > long_chars * 1.2)
    for j in range(n_long):
        if not big:
            break
        size, rel, f = big[(j * 7919) % len(big)]
        big = [b for b in big if b[2] != f]
        with open(f, encoding="utf-8", errors="replace") as fh:
            src = fh.read()[:long_chars]
        names = [n for n, _ in functions(f) if f"def {n}(" in src]
        name = names[len(names) // 2] if names else "main"
        ask = ("unchanged" if j % 2 == 0 else "with a docstring added")
        prompt = (f"# File: {rel} (excerpt)\n{src}\n\n# Repeat the function `{name}` defined "
                  f"above, {ask}:\n")
        rows.append({"category": "long", "prompt": prompt, "max_new_tokens": 64,
                     "source": f"{rel}[:{long_chars}]"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--complete", type=int, default=16)
    ap.add_argument("--edit", type=int, default=16)
    ap.add_argument("--long", type=int, default=6)
    ap.add_argument("--long-chars", type=int, default=11_000)
    add_output_options(ap)
    a = ap.parse_args()
    rows = write_workload(build(a.complete, a.edit, a.long, a.long_chars), a)
    packages = {r["source"].split("/")[1 if a.mixed else 0] for r in rows}
    print(f"wrote {len(rows)} prompts to {a.out} from {len(packages)} packages")


if __name__ == "__main__":
    main()
