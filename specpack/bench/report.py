"""Aggregate raw bench phases into rows, a markdown table and PNG plots.

Per (method, concurrency, category):

* ``tau`` - tokens per target forward, bonus included. vLLM does not count
  target forwards, but every forward emits exactly one token the target
  chose itself plus the drafts it accepted, so
  ``tau = output_tokens / (output_tokens - accepted_drafts)`` exactly (plain
  decoding: 1.0). The reference runtime counts forwards directly.
* ``acceptance_by_position[i]`` - fraction of drafts whose token ``i + 1``
  was accepted (vLLM's per-position counter / number of drafts).
* ``output_tok_s`` = output tokens / phase wall time; ``tpot_ms`` = mean
  time per output token after the first, per request.
* ``speedup_vs_none`` / ``speedup_vs_best_builtin`` - ratios of
  ``output_tok_s`` to the same phase's ``none`` row / best built-in row.
* ``greedy_match`` - every request's tokens equal the ``none`` run's.
* ``decisions`` (specpack methods on the in-process vLLM engine and the
  reference runtime) - what the method and its policy decided in the phase:
  ``mean_draft_len`` (drafted nodes per request-step), ``off_share`` (steps
  that drafted nothing although the budget allowed it), ``arm_shares``
  (request-steps per bandit arm).
"""

from __future__ import annotations

import json
from pathlib import Path


def decisions_delta(after: dict | None, before: dict | None) -> dict | None:
    """What the policy decided during one phase: mean draft length per
    request-step, share of steps with speculation off, share of request-steps
    per bandit arm (by its length)."""
    if after is None:
        return None
    before = before or {}
    d = {k: after[k] - before.get(k, 0)
         for k in ("steps", "request_steps", "drafted", "off_steps", "errors")}
    d["mean_draft_len"] = d["drafted"] / d["request_steps"] if d["request_steps"] else 0.0
    d["off_share"] = d["off_steps"] / d["steps"] if d["steps"] else 0.0
    prop, prop0 = after.get("proposer", {}), (before.get("proposer") or {})
    if "arm_picks" in prop:
        picks = [a - b for a, b in zip(prop["arm_picks"],
                                       prop0.get("arm_picks", [0] * len(prop["arm_picks"])))]
        total = sum(picks) or 1
        d["arm_shares"] = {f"k{n}" if len(set(prop["arm_lengths"])) == len(picks) else
                           f"arm{i}": round(p / total, 3)
                           for i, (n, p) in enumerate(zip(prop["arm_lengths"], picks))}
        d["cost_coef"] = prop.get("cost_coef")
    return d


def phase_row(method: str, builtin: bool, phase: dict) -> dict:
    reqs = phase["requests"]
    tokens = sum(len(r["tokens"]) for r in reqs)
    spec = phase.get("spec") or {}
    accepted = spec.get("num_accepted_tokens", 0)
    drafts = spec.get("num_drafts", 0)
    if "tau" in phase:
        tau = phase["tau"]
    else:
        tau = tokens / (tokens - accepted) if tokens > accepted else float(tokens or 1)
    per_pos = phase.get("acceptance_by_position")
    if per_pos is None:
        per_pos = [a / drafts for a in spec.get("accepted_per_pos", [])] if drafts else []
    tpots = [r["tpot_s"] for r in reqs if r.get("tpot_s")]
    return {
        "method": method, "builtin": builtin, "concurrency": phase["concurrency"],
        "category": phase["category"], "requests": len(reqs), "output_tokens": tokens,
        "wall_s": phase["wall_s"], "tau": tau, "acceptance_by_position": per_pos,
        "output_tok_s": tokens / phase["wall_s"] if phase["wall_s"] > 0 else 0.0,
        "tpot_ms": 1e3 * sum(tpots) / len(tpots) if tpots else 0.0,
        "drafts": drafts, "accepted_tokens": accepted,
        "decisions": phase.get("decisions"),
    }


def summarise(results: dict[str, dict], builtins: set[str]) -> list[dict]:
    """``results[method] = {"phases": [...]}`` -> rows with ratios and match flags."""
    rows = []
    index = {}
    for method, res in results.items():
        for ph in res["phases"]:
            row = phase_row(method, method in builtins, ph)
            rows.append(row)
            index[(method, row["concurrency"], row["category"])] = (row, ph)
    for row in rows:
        key = (row["concurrency"], row["category"])
        base, base_ph = index[("none",) + key]
        row["speedup_vs_none"] = row["output_tok_s"] / base["output_tok_s"] if base["output_tok_s"] else 0.0
        bts = [index[(b,) + key][0]["output_tok_s"] for b in builtins if (b,) + key in index]
        best = max(bts) if bts else 0.0
        row["best_builtin_tok_s"] = best
        row["speedup_vs_best_builtin"] = row["output_tok_s"] / best if best else None
        ph = index[(row["method"],) + key][1]
        row["greedy_match"] = all(a["tokens"] == b["tokens"]
                                  for a, b in zip(ph["requests"], base_ph["requests"]))
    return rows


def markdown(rows: list[dict], max_pos: int = 4) -> str:
    head = ("| category | conc. | method | tau | acceptance @1..%d | tok/s | TPOT ms | "
            "x vs none | x vs best built-in | greedy match | draft len | spec off | arms |"
            % max_pos)
    lines = [head, "|" + "---|" * 13]
    for r in sorted(rows, key=lambda r: (r["category"], r["concurrency"])):
        acc = ", ".join(f"{x:.2f}" for x in r["acceptance_by_position"][:max_pos]) or "-"
        vb = "-" if r["speedup_vs_best_builtin"] is None else f"{r['speedup_vs_best_builtin']:.2f}"
        d = r.get("decisions") or {}
        dl = f"{d['mean_draft_len']:.2f}" if d else "-"
        off = f"{100 * d['off_share']:.0f} %" if d else "-"
        arms = " ".join(f"{k}:{v:.2f}" for k, v in (d.get("arm_shares") or {}).items()) or "-"
        lines.append(f"| {r['category']} | {r['concurrency']} | {r['method']} | {r['tau']:.2f} | "
                     f"{acc} | {r['output_tok_s']:.1f} | {r['tpot_ms']:.1f} | "
                     f"{r['speedup_vs_none']:.2f} | {vb} | {'yes' if r['greedy_match'] else 'NO'} | "
                     f"{dl} | {off} | {arms} |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    concs = sorted({r["concurrency"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        ys = []
        for c in concs:
            sel = [r for r in rows if r["method"] == m and r["concurrency"] == c]
            base = [r for r in rows if r["method"] == "none" and r["concurrency"] == c]
            tok = sum(r["output_tokens"] for r in sel) / max(1e-9, sum(r["wall_s"] for r in sel))
            btok = sum(r["output_tokens"] for r in base) / max(1e-9, sum(r["wall_s"] for r in base))
            ys.append(tok / btok if btok else 0.0)
        ax.plot(concs, ys, marker="o", label=m)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("output tok/s vs no speculation")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.legend(fontsize=8)
    ax.set_title("speedup vs concurrency (all categories)")
    fig.tight_layout()
    p = out_dir / "speedup_vs_concurrency.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    files.append(p.name)

    cats = sorted({r["category"] for r in rows})
    c0 = concs[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        ys = [next((r["tau"] for r in rows if r["method"] == m and r["category"] == c
                    and r["concurrency"] == c0), 0.0) for c in cats]
        ax.bar([i + j * width for i in range(len(cats))], ys, width, label=m)
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(cats))], cats, fontsize=8)
    ax.set_ylabel("tau (tokens per target forward)")
    ax.set_title(f"tau per category (concurrency {c0})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / "tau_by_category.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    files.append(p.name)
    return files


def write(out_dir: Path, meta: dict, results: dict, rows: list[dict]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(rows)
    (out_dir / "bench.md").write_text(md)
    images = plots(rows, out_dir)
    doc = {"meta": meta, "rows": rows, "raw": results, "plots": images}
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=1))
    return doc
