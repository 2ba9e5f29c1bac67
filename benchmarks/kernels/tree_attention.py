"""Tree-attention kernels: correctness vs the torch reference, then timings.

    python benchmarks/kernels/tree_attention.py              # GPU: full grid, fp16
    TRITON_INTERPRET=1 python benchmarks/kernels/tree_attention.py --small   # CPU

For every available backend (torch SDPA reference with a dense mask, Triton,
FlashInfer if importable) it first checks the output against the reference
on a mixed batch (GQA, ragged trees, page-crossing prefixes), then times
each backend over batch x prefix x tree nodes and prints one markdown table
with times and ratios to the reference measured in the same run. As in a
model forward, each backend is planned once per step
(:class:`TreeAttentionPlan`) and the table gives the per-layer ``run`` time
(ratio to the reference's) and, separately, the per-step plan time (for
FlashInfer: page metadata, custom mask and ``plan()``). Setup:
Hq=32, Hkv=8, head_dim=128, page size 16, random trees (each node's parent
uniform over earlier nodes), KV pages shuffled. Designed to finish in under
8 minutes on one GPU with only torch + Triton installed.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from specpack.draft import Draft
from specpack.kernels.tree_attention import (TreeAttentionPlan, available_backends,
                                             tree_attention)
from specpack.kernels.tree_mask import build_tree_batch


def random_tree(rng, n):
    return Draft(rng.integers(0, 1000, n), [-1] + [int(rng.integers(-1, i)) for i in range(1, n)])


def make_batch(rng, batch, prefix, nodes, Hq, Hkv, D, page_size, dtype, device):
    drafts = [random_tree(rng, nodes - 1) for _ in range(batch)]  # nodes incl. root
    tb = build_tree_batch(drafts)
    P = torch.full((batch,), prefix, dtype=torch.int32)
    per = (prefix + nodes + page_size - 1) // page_size
    total = per * batch
    perm = torch.as_tensor(rng.permutation(total), dtype=torch.int32)
    table = perm.view(batch, per).contiguous()
    k = torch.randn(total, page_size, Hkv, D, dtype=dtype, device=device)
    v = torch.randn(total, page_size, Hkv, D, dtype=dtype, device=device)
    q = torch.randn(batch * nodes, Hq, D, dtype=dtype, device=device)
    return q, k, v, table.to(device), P.to(device), tb.cu_tree.to(device), tb.bits.to(device)


def make_plan(args, backend):
    q, k, _, table, P, cu, bits = args
    return TreeAttentionPlan(table, P, cu, bits, num_qo_heads=q.shape[1], num_kv_heads=k.shape[2],
                             head_dim=q.shape[2], page_size=k.shape[1], dtype=q.dtype,
                             device=q.device, backend=backend)


def timed(fn, device, reps):
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CPU-sized grid (interpreter mode)")
    ap.add_argument("--reps", type=int, default=None)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    rng = np.random.default_rng(0)
    backends = available_backends(device)
    if a.small or device.type == "cpu":
        Hq, Hkv, D, ps = 4, 2, 64, 16
        grid = list(itertools.product([1, 2], [64, 256], [16, 32]))
        reps = a.reps or 1
    else:
        Hq, Hkv, D, ps = 32, 8, 128, 16
        grid = list(itertools.product([1, 8, 32], [1024, 4096, 16384], [16, 64, 128]))
        reps = a.reps or 10
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (TRITON_INTERPRET=1)"
    print(f"# tree attention on {name}, {dtype}, Hq={Hq}, Hkv={Hkv}, D={D}, page={ps}, "
          f"backends: {', '.join(backends)}")

    # correctness on a mixed batch
    tol = 2e-2 if dtype == torch.float16 else 2e-5
    for b_name in backends:
        drafts = [Draft.empty(), Draft.chain(list(range(20))), random_tree(rng, 40),
                  Draft(list(range(30)), [-1] * 30)]
        tb = build_tree_batch(drafts)
        P = torch.tensor([0, 17, 33, 100], dtype=torch.int32)
        per = int((P + tb.tree_sizes).max()) // ps + 1
        table = torch.as_tensor(rng.permutation(4 * per), dtype=torch.int32).view(4, per)
        k = torch.randn(4 * per, ps, Hkv, D, dtype=dtype, device=device)
        v = torch.randn_like(k)
        q = torch.randn(int(tb.tree_sizes.sum()), Hq, D, dtype=dtype, device=device)
        args = (q, k, v, table.to(device), P.to(device), tb.cu_tree.to(device), tb.bits.to(device))
        ref = tree_attention(*args, backend="torch").float()
        err = (tree_attention(*args, backend=b_name).float() - ref).abs().max().item()
        status = "ok" if err <= tol else "FAIL"
        print(f"correctness {b_name}: max abs error {err:.2e} (tolerance {tol:.0e}) {status}")

    cols = [b for b in backends if b != "torch"]
    print("\n| batch | prefix | nodes | torch SDPA ms | " + " | ".join(
        f"{b} ms | {b} x | {b} plan ms" for b in cols) + " |")
    print("|" + "---|" * (4 + 3 * len(cols)))
    for batch, prefix, nodes in grid:
        args = make_batch(rng, batch, prefix, nodes, Hq, Hkv, D, ps, dtype, device)
        qkv = args[:3]
        ref_plan = make_plan(args, "torch")
        t_ref = timed(lambda: ref_plan.run(*qkv), device, reps)
        cells = []
        for b_name in cols:
            plan = make_plan(args, b_name)
            t = timed(lambda: plan.run(*qkv), device, reps)
            t_plan = timed(lambda: make_plan(args, b_name), device, reps)
            cells += [f"{t * 1e3:.3f}", f"{t_ref / t:.1f}", f"{t_plan * 1e3:.3f}"]
        print(f"| {batch} | {prefix} | {nodes} | {t_ref * 1e3:.3f} | " + " | ".join(cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
