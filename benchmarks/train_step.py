"""Training-step throughput and peak memory: FlexBERT vs transformers' ModernBertForMaskedLM, side by side.

Same config (ModernBERT-base widths: hidden 768, 12 heads, GLU 1152, vocab 50368, window 128, a
global layer every 3; the layer count reducible), same weights, same documents, same masked labels (30%,
ModernBERT's rate); a step is forward + backward + StableAdamW step (ModernBERT's decoupled settings); fp32 on
CPU, bf16 autocast on CUDA.
- FlexBERT: its packed path (one packed row + cu_seqlens), the head on masked tokens only, and the loss computed
  without materializing the logits (`return_logits=False`, what the trainer does when no training metric needs them;
  the recipe's `disable_train_metrics: true`).
- the peer, as a transformers user would run it: padded batches (pad to the longest document of the batch),
  attn_implementation="sdpa" (flash_attention_2 on CUDA with bf16 when installed), `sparse_prediction=True` (its
  head on masked tokens only), transformers' default compile setting (off on CPU).
Throughput counts REAL tokens only. Cases (about `--tokens` real tokens per step each):
- varlen:    variable-length documents, max length 1024, lengths ~ normal(40%, 30% of max) clipped to [16, max];
- fixed1024: documents of exactly 1024 tokens;
- long8192:  documents of exactly 8192 tokens (--tokens / 8192 of them; one of `--tokens` tokens when fewer).
Timing: one subprocess per case holds both models; each round runs a dense matmul probe, then one step of each
model on the same documents (varlen: freshly drawn every round), in alternating order, so a shared, busy machine
slows both alike. Over the `--steps` timed rounds (after `--warmup`): tokens/s = real tokens / seconds, both summed,
and the speedup is their ratio (the per-round ratios are printed and kept in the JSON). Memory: a fresh subprocess
per (model, case) measures one step's peak above the persistent state (weights, Adam moments): on CPU the RSS
high-water mark (see benchmarks/common.py), on CUDA torch.cuda.max_memory_allocated.
Model FLOPs: flexbert.model.flops.training_flops (matmuls, forward + backward, attention over visible pairs).

    python benchmarks/train_step.py [--layers 3] [--device cpu|cuda] [--steps 3] [--warmup 1] [--threads 2]
                                    [--cases varlen,fixed1024,long8192] [--tokens 8192] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import gc
import os
from dataclasses import dataclass

CASES = ("varlen", "fixed1024", "long8192")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default 3 on cpu, 22 on cuda)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="float32 (default on cpu) or bfloat16 autocast (default on cuda)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model and case")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model and case first")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--tokens", type=int, default=8192, help="real tokens per step (the long case: one document)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-attn", default="auto", choices=["auto", "sdpa", "eager", "flash_attention_2"])
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="measure peak memory")
    p.add_argument("--json", default=None, help="write all measurements here")
    # internal: what a worker subprocess measures
    p.add_argument("--worker", choices=["time", "memory"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", choices=["ours", "peer"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.layers = args.layers or (22 if args.device == "cuda" else 3)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        p.error(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    return args


if __name__ == "__main__":
    parse_args()  # `--help` and usage errors answer here, before the imports below load torch (seconds)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from flexbert import FlexBertConfig  # noqa: E402
from flexbert.hf_interop import flexbert_to_hf_name, modernbert_config_dict  # noqa: E402
from flexbert.model.flops import training_flops  # noqa: E402
from flexbert.model.modeling import FlexBertForMaskedLM  # noqa: E402
from flexbert.optim.builders import build_optimizer  # noqa: E402

MAX_LEN = 1024
PAD, MASK, FIRST_SPECIAL = 50283, 50284, 50277  # ModernBERT tokenizer: specials live at the top of the vocab
MLM_PROBABILITY = 0.3
OPTIMIZER = {"name": "decoupled_stableadamw", "lr": 8e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 1e-5,
             "filter_bias_norm_wd": True}  # ModernBERT's optimizer settings
# Dense bf16 / fp32 (non-tensor-core) peaks in FLOP/s, for MFU on GPUs; the first key contained in the device name
# wins, so the PCIe and NVL cards come before the SXM ones ("NVIDIA H100 80GB HBM3" is SXM).
GPU_PEAKS = {"H100 PCIe": (756e12, 51e12), "H100 NVL": (835e12, 60e12), "H100": (989e12, 67e12),
             "H200": (989e12, 67e12), "A100": (312e12, 19.5e12)}


def gpu_peak_flops(gpu_name: str, bf16: bool) -> float | None:
    """The device's dense peak FLOP/s by name (bf16 tensor cores, or fp32), None for a device not in GPU_PEAKS."""
    peaks = next((v for k, v in GPU_PEAKS.items() if k in gpu_name), None)
    return None if peaks is None else peaks[0 if bf16 else 1]


# ------------------------------------------------------------------------------------------------- inputs
def document_lengths(case: str, tokens: int, seed: int) -> list[int]:
    if case == "fixed1024":
        return [MAX_LEN] * max(1, tokens // MAX_LEN)
    if case == "long8192":
        return [min(tokens, 8192)] * max(1, tokens // 8192)
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while sum(lengths) < tokens:
        lengths.append(int(np.clip(rng.normal(0.4 * MAX_LEN, 0.3 * MAX_LEN), 16, MAX_LEN)))
    return lengths


@dataclass
class Batch:
    lengths: list[int]
    packed: dict  # FlexBERT: input_ids (1, T), cu_seqlens (D+1,), max_seqlen, labels (1, T)
    padded: dict  # the peer: input_ids (D, S), attention_mask (D, S), labels (D, S), S = longest document

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def padded_tokens(self) -> int:
        return len(self.lengths) * max(self.lengths)


def make_batch(lengths: list[int], seed: int, device: torch.device) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    ids = torch.randint(0, FIRST_SPECIAL, (T,), generator=gen)
    masked = torch.rand(T, generator=gen) < MLM_PROBABILITY
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    inputs = ids.masked_fill(masked, MASK)
    cu = torch.tensor([0] + np.cumsum(lengths).tolist(), dtype=torch.int32)
    D, S = len(lengths), max(lengths)
    pad_ids, pad_labels = torch.full((D, S), PAD), torch.full((D, S), -100)
    mask = torch.zeros(D, S, dtype=torch.long)
    for i, n in enumerate(lengths):
        pad_ids[i, :n], pad_labels[i, :n], mask[i, :n] = inputs[cu[i]:cu[i + 1]], labels[cu[i]:cu[i + 1]], 1
    packed = {"input_ids": inputs[None], "cu_seqlens": cu, "max_seqlen": S, "labels": labels[None]}
    padded = {"input_ids": pad_ids, "attention_mask": mask, "labels": pad_labels}
    move = lambda d: {k: v.to(device) if torch.is_tensor(v) else v for k, v in d.items()}  # noqa: E731
    return Batch(lengths, move(packed), move(padded))


# ------------------------------------------------------------------------------------------------- models
def flexbert_config(layers: int, **overrides) -> FlexBertConfig:
    """ModernBERT-base widths with `layers` layers; `overrides` replace any config key (e.g. a smaller width)."""
    return FlexBertConfig(**{**dict(
        vocab_size=50368, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=1152,
        pad_token_id=PAD, embedding_layer="sans_pos", attention_layer="rope", bert_layer="prenorm", mlp_layer="glu",
        normalization="layernorm", norm_kwargs={"eps": 1e-5, "bias": False}, hidden_act="gelu", head_pred_act="gelu",
        sliding_window=128, global_attn_every_n_layers=3, rotary_emb_base=160000.0, local_attn_rotary_emb_base=10000.0,
        embed_norm=True, final_norm=True, skip_first_prenorm=True, init_method="full_megatron",
        tie_word_embeddings=True, decoder_bias=True, masked_prediction=True, max_position_embeddings=8192,
        attention_probs_dropout_prob=0.0,
    ), **overrides})


def peer_attention(args) -> str:
    if args.peer_attn != "auto":
        return args.peer_attn
    if args.device == "cuda" and args.dtype == "bfloat16":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def build_models(args, which: tuple[str, ...], device: torch.device, config: FlexBertConfig | None = None) -> dict:
    """{"ours": FlexBertForMaskedLM, "peer": ModernBertForMaskedLM} with the same weights, in train mode; `config`
    defaults to `flexbert_config(args.layers)`."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(args.seed)
    config = config or flexbert_config(args.layers)
    ours = FlexBertForMaskedLM(config)
    models = {"ours": ours}
    if "peer" in which:
        hf_config = ModernBertConfig(**modernbert_config_dict(config), sparse_prediction=True,
                                     attn_implementation=peer_attention(args))
        peer = ModernBertForMaskedLM(hf_config)
        missing, unexpected = peer.load_state_dict(
            {flexbert_to_hf_name(k): v for k, v in ours.state_dict().items()}, strict=False)
        if unexpected or set(missing) - {"decoder.weight"}:  # decoder.weight is tied to the embeddings
            raise RuntimeError(f"weight transfer to ModernBERT failed: missing {missing}, unexpected {unexpected}")
        models["peer"] = peer
    models = {k: v.to(device).train() for k, v in models.items() if k in which}
    gc.collect()
    return models


def make_step(model, inputs: dict, optimizer, device: torch.device, dtype: torch.dtype):
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    if isinstance(model, FlexBertForMaskedLM):  # as our trainer runs it when no training metric reads the logits
        inputs = {**inputs, "return_logits": False}

    def step() -> torch.Tensor:
        with autocast:
            loss = model(**inputs).loss  # the output (logits) is dropped at once, as a training loop would
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


# ------------------------------------------------------------------------------------------------- workers
def worker_setup(args):
    torch.set_num_threads(args.threads)
    return torch.device(args.device), getattr(torch, args.dtype)


def round_batch(args, r: int, device: torch.device) -> Batch:
    """Round r's documents (varlen: a fresh draw every round, so no single lucky batch decides the result)."""
    return make_batch(document_lengths(args.case, args.tokens, args.seed + r), args.seed + 1000 + r, device)


def time_worker(args, config: FlexBertConfig | None = None) -> dict:
    """Both models in one process: each round, a matmul probe, then one step of each on the same documents, in
    alternating order (so a busy, shared machine slows both alike)."""
    device, dtype = worker_setup(args)
    models = build_models(args, ("ours", "peer"), device, config)
    optimizers = {name: build_optimizer(OPTIMIZER, m) for name, m in models.items()}
    rounds = []
    for r in range(args.warmup + args.steps):
        batch = round_batch(args, r, device)
        inputs = {"ours": batch.packed, "peer": batch.padded}
        probe_n = 8192 if device.type == "cuda" else 2048
        record = {"real_tokens": batch.real_tokens, "padded_tokens": batch.padded_tokens, "docs": len(batch.lengths),
                  "flops": training_flops(models["ours"], batch.packed), "timed": r >= args.warmup,
                  "matmul_flops_per_s": common.matmul_flops_per_s(device, dtype, n=probe_n)}
        for name in (("ours", "peer") if r % 2 == 0 else ("peer", "ours")):
            step = make_step(models[name], inputs[name], optimizers[name], device, dtype)
            losses = []
            record[f"{name}_s"] = common.timed(lambda: losses.append(step()), device)
            record[f"{name}_loss"] = float(losses[0])
        rounds.append(record)
    return {"case": args.case, "rounds": rounds, "machine": common.machine_info(device)}


def memory_worker(args) -> dict:
    """One model in a fresh process: the peak of one training step (the first timed round's documents) above the
    persistent state (weights, Adam moments)."""
    device, dtype = worker_setup(args)
    batch = round_batch(args, args.warmup, device)
    model = build_models(args, (args.model,), device)[args.model]
    optimizer = build_optimizer(OPTIMIZER, model)
    # Allocate the persistent Adam moments first, with an all-zero gradient (moments stay 0, the update is 0).
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step = make_step(model, batch.packed if args.model == "ours" else batch.padded, optimizer, device, dtype)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        method = "torch.cuda.max_memory_allocated above the persistent state"
        cross_check = None
    else:
        base = common.rss_mib()
        exact = common.reset_peak_rss()
        with common.AnonPeakSampler() as sampler:
            step()
        sampled = sampler.growth_mib
        if exact:
            peak, method = common.peak_rss_mib() - base, "RSS high-water mark above the pre-step RSS"
        else:
            peak, method = sampled, "peak anonymous RSS sampled every 1 ms, above the pre-step value"
        cross_check = sampled  # kept in the JSON
    return {"case": args.case, "model": args.model, "peak_mib": peak, "method": method, "cross_check_mib": cross_check,
            "real_tokens": batch.real_tokens, "padded_tokens": batch.padded_tokens}


# ------------------------------------------------------------------------------------------------- driver
def worker_args(args, worker: str, case: str, model: str | None = None) -> list[str]:
    out = ["--worker", worker, "--case", case, "--layers", str(args.layers), "--device", args.device,
           "--dtype", args.dtype, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--tokens", str(args.tokens), "--seed", str(args.seed),
           "--peer-attn", args.peer_attn]
    return out + (["--model", model] if model else [])


def summarize(args, timing: dict, memory: dict) -> dict:
    """Over the timed rounds: tokens/s = real tokens / seconds summed over rounds (both models ran the same
    documents, so their ratio is the speedup on that workload; varlen rounds differ on purpose); the per-round
    ratios are kept to show the spread. FLOP/s against the matmul probe: per round, then the median."""
    timed = [r for r in timing["rounds"] if r["timed"]]
    total = lambda key: sum(r[key] for r in timed)  # noqa: E731
    med = lambda key: common.median([key(r) for r in timed])  # noqa: E731
    real, padded = total("real_tokens"), total("padded_tokens")
    row = {"case": timing["case"], "rounds": len(timed), "docs": total("docs") / len(timed),
           "real_tokens": real / len(timed), "peer_padded_tokens": padded / len(timed), "padding_ratio": padded / real,
           "ours_tok_s": real / total("ours_s"), "peer_tok_s": real / total("peer_s"),
           "speedup": total("peer_s") / total("ours_s"),
           "speedup_per_round": [r["peer_s"] / r["ours_s"] for r in timed],
           "ours_step_s": [r["ours_s"] for r in timed], "peer_step_s": [r["peer_s"] for r in timed],
           "model_flops_per_token": total("flops") / real,
           "matmul_flops_per_s": med(lambda r: r["matmul_flops_per_s"]),
           "ours_flops_per_s": total("flops") / total("ours_s"), "peer_flops_per_s": total("flops") / total("peer_s"),
           "ours_of_matmul": med(lambda r: r["flops"] / r["ours_s"] / r["matmul_flops_per_s"]),
           "peer_of_matmul": med(lambda r: r["flops"] / r["peer_s"] / r["matmul_flops_per_s"]),
           "first_step_loss": {"ours": timing["rounds"][0]["ours_loss"], "peer": timing["rounds"][0]["peer_loss"]}}
    if args.device == "cuda":
        peak = gpu_peak_flops(timing["machine"].get("gpu", ""), bf16=args.dtype == "bfloat16")
        if peak:
            row["ours_mfu"] = row["ours_flops_per_s"] / peak
            row["peer_mfu"] = row["peer_flops_per_s"] / peak
    if memory:
        row.update(ours_peak_mib=memory["ours"]["peak_mib"], peer_peak_mib=memory["peer"]["peak_mib"],
                   memory_ratio=memory["ours"]["peak_mib"] / memory["peer"]["peak_mib"],
                   memory_method=memory["ours"]["method"])
    return row


def report(args, rows: list[dict]) -> str:
    headers = ["case", "docs", "tokens", "peer padded", "ours tok/s", "peer tok/s", "speedup", "ours peak MiB",
               "peer peak MiB", "mem ratio", "ours GFLOP/s", "of matmul", "peer of matmul"]
    table = []
    for r in rows:
        mem = ([f"{r['ours_peak_mib']:.0f}", f"{r['peer_peak_mib']:.0f}", f"{r['memory_ratio']:.2f}"]
               if "ours_peak_mib" in r else ["-", "-", "-"])
        table.append([r["case"], f"{r['docs']:.0f}", f"{r['real_tokens']:.0f}", f"{r['peer_padded_tokens']:.0f}",
                      f"{r['ours_tok_s']:.0f}", f"{r['peer_tok_s']:.0f}", f"{r['speedup']:.2f}x", *mem,
                      f"{r['ours_flops_per_s'] / 1e9:.1f}", f"{r['ours_of_matmul']:.0%}", f"{r['peer_of_matmul']:.0%}"])
    lines = [common.format_table(headers, table)]
    by_case = {r["case"]: r for r in rows}
    for r in rows:
        lines.append(f"# {r['case']}: per-round speedups {', '.join(f'{x:.2f}' for x in r['speedup_per_round'])}; "
                     f"the peer computes {r['padding_ratio']:.2f}x the real tokens; dense {args.dtype} matmul "
                     f"{r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; first-step loss ours "
                     f"{r['first_step_loss']['ours']:.5f}, peer {r['first_step_loss']['peer']:.5f}")
    if "long8192" in by_case and "fixed1024" in by_case:
        long, fixed = by_case["long8192"], by_case["fixed1024"]
        flat = long["ours_tok_s"] / fixed["ours_tok_s"]
        # at equal FLOP/s, tok/s scales with tokens per FLOP: a long document's extra global-attention FLOPs bound it
        bound = fixed["model_flops_per_token"] / long["model_flops_per_token"]
        lines.append(f"# ours tok/s, one {long['real_tokens']:.0f}-token document vs 1024-token documents: {flat:.2f}x "
                     f"(at equal FLOP/s the model FLOPs per token allow {bound:.2f}x)")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        common.emit(time_worker(args) if args.worker == "time" else memory_worker(args))
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = common.machine_info(device)
    print(f"# training step, {args.layers} layers, {args.dtype}, {args.device}, {args.threads} threads, "
          f"~{args.tokens} real tokens/step, {args.warmup} warm-up + {args.steps} timed rounds; "
          f"peer attn_implementation={peer_attention(args)}; torch {torch.__version__}; "
          f"load {info.get('loadavg_1min')}", flush=True)
    script = os.path.abspath(__file__)
    rows, raw = [], []
    for case in args.cases.split(","):
        timing = common.run_worker(script, worker_args(args, "time", case))
        memory = {m: common.run_worker(script, worker_args(args, "memory", case, m), env=common.EXACT_RSS_ENV)
                  for m in ("ours", "peer")} if args.memory else {}
        raw.append({"timing": timing, "memory": memory})
        rows.append(summarize(args, timing, memory))
        r = rows[-1]
        print(f"# {case}: ours {r['ours_tok_s']:.0f} tok/s, peer {r['peer_tok_s']:.0f} tok/s ({r['speedup']:.2f}x)"
              + (f", peak MiB {r['ours_peak_mib']:.0f} vs {r['peer_peak_mib']:.0f}" if memory else ""), flush=True)
    print(report(args, rows))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "case", "model")}
        machine = {**info, "loadavg_1min_end": round(os.getloadavg()[0], 2)}
        common.write_json(args.json, {"args": settings, "machine": machine, "results": rows, "raw": raw})
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
