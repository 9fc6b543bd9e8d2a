"""Time each attention kernel alone on one packed sequence per length.

Global layers: `sdpa` (plus flash-attn when installed on CUDA). Local layers (|i - j| <= window): the blocked
`sliding_window` kernel against `sdpa` with a dense band mask. Prints ms and ms/token per length (local cost
should stay flat per token, i.e. linear in T) and the speedup of sliding_window over dense masked SDPA.

    python benchmarks/attention.py [--heads 12 --head-dim 64 --lengths 512,1024,2048,4096,8192 --window 64
                                    --backward/--no-backward --docs 1 --threads 2 --device cpu]

The default run (fp32, 2 threads, forward + backward) takes about a minute and a half on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

# torch and the kernels are imported inside the functions: `--help` answers without loading them.


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--lengths", default="512,1024,2048,4096,8192", help="packed tokens per run, comma-separated")
    p.add_argument("--window", type=int, default=64, help="one-sided local window (ModernBERT sliding_window 128 -> 64)")
    p.add_argument("--docs", type=int, default=1, help="split each sequence into this many equal documents")
    p.add_argument("--backward", action=argparse.BooleanOptionalAction, default=True, help="time forward + backward")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=5, help="at most this many timed calls after one warm-up")
    p.add_argument("--budget", type=float, default=2.0, help="stop timing a kernel once its timed calls took this many s")
    p.add_argument("--dense-max", type=int, default=8192, help="skip dense masked SDPA above this many tokens")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_kernel(kernel, q, k, v, cu, max_seqlen, window, index, backward: bool, repeats: int, budget: float) -> float:
    """Best wall time in seconds of one call (+ backward) -- the minimum resists other processes sharing the CPU;
    the warm-up call is not counted."""
    import torch

    grad = torch.randn_like(q) if backward else None

    def once() -> float:
        for x in (q, k, v):
            x.grad = None
        sync(q.device)
        start = time.perf_counter()
        out = kernel(q, k, v, cu, max_seqlen, window, index=index)
        if backward:
            out.backward(grad)
        sync(q.device)
        return time.perf_counter() - start

    once()
    times = [once()]
    while len(times) < repeats and sum(times) < budget:
        times.append(once())
    return min(times)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from flexbert.model.attention_kernels import ATTENTION_KERNELS, PackedIndex, flash_attn_available
    from flexbert.model.flops import attention_flops

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    H, D, w = args.heads, args.head_dim, args.window
    lengths = [int(x) for x in args.lengths.split(",")]

    runs = [("global", "sdpa", None), ("local", "sliding_window", w), ("local", "sdpa (dense band mask)", w)]
    for version in (2, 3):
        if device.type == "cuda" and flash_attn_available(version):
            runs += [("global", f"flash_attn{version}", None)] + ([("local", "flash_attn2", w)] if version == 2 else [])

    print(f"# attention kernels: H={H} D={D} window={w} docs/seq={args.docs} {args.dtype} on {device} "
          f"threads={torch.get_num_threads()} {'fwd+bwd' if args.backward else 'fwd'}; torch {torch.__version__}")
    if device.type != "cuda":
        print("# flash_attn2 / flash_attn3: CUDA only, not timed here")
    print(f"{'layer':<7}{'kernel':<26}{'tokens':>7}{'ms':>11}{'ms/token':>11}{'GFLOP/s':>9}")
    results: dict[tuple[str, int], float] = {}
    for T in lengths:
        doc_len = [T // args.docs + (1 if i < T % args.docs else 0) for i in range(args.docs)]
        cu = torch.tensor([0] + [sum(doc_len[: i + 1]) for i in range(args.docs)], dtype=torch.int32, device=device)
        g = torch.Generator(device="cpu").manual_seed(T)
        q, k, v = (torch.randn(T, H, D, generator=g).to(device, dtype).requires_grad_(args.backward) for _ in range(3))
        index = PackedIndex.from_cu_seqlens(cu, max(doc_len))  # once per batch in the model, shared by all layers
        for layer, name, window in runs:
            if name.startswith("sdpa (dense") and T > args.dense_max:
                continue
            kernel = ATTENTION_KERNELS.get(name.split()[0])
            secs = time_kernel(kernel, q, k, v, cu, max(doc_len), window, index, args.backward, args.repeats,
                                args.budget)
            results[(name, T)] = secs
            # useful work: the pairs the attention must see (dense masked SDPA computes far more than this)
            flops = attention_flops(doc_len, H, D, window) * (3 if args.backward else 1)
            print(f"{layer:<7}{name:<26}{T:>7}{secs * 1e3:>11.1f}{secs * 1e3 / T:>11.4f}{flops / secs / 1e9:>9.1f}",
                  flush=True)

    sw, dense = "sliding_window", "sdpa (dense band mask)"
    common = [T for T in lengths if (sw, T) in results and (dense, T) in results]
    if common:
        T = max(common)
        print(f"# sliding_window vs dense masked SDPA at {T} tokens: {results[(dense, T)] / results[(sw, T)]:.1f}x faster")
    lo, hi = min(lengths), max(lengths)
    if (sw, lo) in results and (sw, hi) in results and hi > lo:
        per_tok = [results[(sw, T)] / T * 1e3 for T in (lo, hi)]
        print(f"# sliding_window ms/token: {per_tok[0]:.4f} at {lo} -> {per_tok[1]:.4f} at {hi} tokens "
              f"({hi / lo:.0f}x tokens, {results[(sw, hi)] / results[(sw, lo)]:.1f}x time)")


if __name__ == "__main__":
    main()
