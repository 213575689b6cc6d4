"""Attention masks: boolean masks handed to every layer (the path before) against the additive
masks built once per forward and ``is_causal`` for right-padded batches (``AttentionMasks.build``).

    .venv/bin/python -m benchmarks.attention_masks --rounds 5 --write BENCHMARKS.md

The same GPT runs the same batch both ways; only the masks differ. Each case is a batch the
phases send: SFT and the reward model (right-padded), PPO and sampling prompts (left-padded), a
GPT-3 alternating model's unpadded pretraining batch (the band). A forward is timed as the median
of ``rounds`` calls (contenders alternating), and its memory is the growth of the process's peak
resident set during one call (Linux VmHWM, reset through /proc/self/clear_refs before it, with
glibc returning freed blocks at once) — or,
on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before. Before timing, both
paths must give the same hidden states on every real token.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from benchmarks.common import machine_info, markdown_table, today, write_section
from orchestrator.config.model import get_model
from orchestrator.model.attention import AttentionMasks, visible_keys

HEADING = "## Attention masks (boolean per layer vs additive once, is_causal)"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    padding: str
    """none | right | left: how the batch is padded (a quarter of the rows lose up to half their tokens)."""
    attention: str = "dense"


CASES = (Case("SFT / RM batch", "gpt-25m", "right"), Case("PPO / sampling prompts", "gpt-25m", "left"),
         Case("pretraining, alternating bands", "gpt-25m", "none", "alternating"))


def padding_mask(kind: str, batch: int, seq: int) -> Optional[torch.Tensor]:
    if kind == "none":
        return None
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(batch):
        pad = (row * seq) // (2 * batch)
        if pad:
            mask[row, seq - pad:] = 0 if kind == "right" else 1
            mask[row, :pad] = 0 if kind == "left" else 1
    return mask


def boolean_masks(*, q_len: int, past: int, attention_mask, window, device, dtype) -> AttentionMasks:
    """The path before: boolean masks, which SDPA converts to additive ones inside every layer."""
    return AttentionMasks(*visible_keys(q_len=q_len, past=past, attention_mask=attention_mask, window=window,
                                        device=device))


def forward(model, ids, attention_mask, positions, build: Callable[..., AttentionMasks]) -> torch.Tensor:
    """GPT.forward (no cache) up to the final LayerNorm with the masks from ``build`` (the head's
    logits, the same for both and larger than any mask, would set the peak otherwise)."""
    x = model.embed(ids, position_ids=positions, past=0)
    window = model.config.local_window if model.config.attention == "alternating" else None
    masks = build(q_len=ids.shape[1], past=0, attention_mask=attention_mask, window=window, device=x.device, dtype=x.dtype)
    for block in model.h:
        x, _ = block(x, masks=masks)
    return model.ln_f(x)


def return_freed_memory() -> None:
    """Make glibc map every allocation over 64 KiB on its own and unmap it on free (``mallopt``
    M_MMAP_THRESHOLD, which also stops the threshold from adapting), so the resident set follows
    the live tensors and its peak is the peak of one call, not of the earlier ones."""
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)


def peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak memory one call of ``run`` adds (CUDA allocator, or the process's resident set)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    status = Path("/proc/self/status")
    kib = lambda field: int(re.search(rf"{field}:\s+(\d+) kB", status.read_text()).group(1))  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")
    before = kib("VmRSS")
    run()
    return (kib("VmHWM") - before) * 1024


def measure(case: Case, *, batch: int, seq: int, rounds: int, device: torch.device, dtype: torch.dtype) -> dict:
    from orchestrator.model.gpt import GPT
    from orchestrator.model.params import init_parameters, param_shards

    config = dataclasses.replace(get_model(case.preset), ctx=seq, dropout=0.0, attention=case.attention)
    model = GPT(config)
    init_parameters(param_shards(model), config=config, seed=0)
    model = model.to(device=device, dtype=dtype).eval()
    ids = torch.randint(1, config.vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    mask = padding_mask(case.padding, batch, seq)
    mask = mask.to(device) if mask is not None else None
    positions = (mask.cumsum(-1) - 1).clamp(min=0) if case.padding == "left" else None
    paths = {"boolean per layer": boolean_masks, "additive once": AttentionMasks.build}
    runs = {name: (lambda build=build: forward(model, ids, mask, positions, build)) for name, build in paths.items()}
    with torch.no_grad():
        outputs = {name: run() for name, run in runs.items()}
        real = mask.bool() if mask is not None else torch.ones(batch, seq, dtype=torch.bool, device=device)
        a, b = (out[real].float() for out in outputs.values())
        if not torch.allclose(a, b, atol=1e-4 if dtype == torch.float32 else 5e-2, rtol=0):
            raise RuntimeError(f"{case.name}: the two mask paths give different hidden states ({(a - b).abs().max():.2e})")
        del outputs, a, b
        seconds = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[name].append(time.perf_counter() - start)
        memory = {name: peak_bytes(run, device) for name, run in runs.items()}
    return dict(case=case, seconds={name: statistics.median(v) for name, v in seconds.items()}, memory=memory)


def section(rows: list[dict], *, command: str, batch: int, seq: int, device: str, precision: str) -> str:
    table = []
    for row in rows:
        old, new = row["seconds"]["boolean per layer"], row["seconds"]["additive once"]
        table.append([row["case"].name, f"{row['case'].padding}", f"{old * 1e3:.0f}", f"{new * 1e3:.0f}",
                      f"{old / new:.2f}×", f"{row['memory']['boolean per layer'] / 2**20:.0f}",
                      f"{row['memory']['additive once'] / 2**20:.0f}"])
    header = ["batch", "padding", "boolean ms", "additive ms", "speed-up", "boolean MiB", "additive MiB"]
    return "\n".join([
        HEADING, "",
        f"`{command}` — {today()}, {machine_info().describe()}; device {device}, {precision}.", "",
        f"gpt-25m (6 layers, 8 heads × 64) at {seq} tokens, batch {batch}, one forward of the blocks (no head) without "
        "gradients; MiB is the memory one forward adds at its peak. SFT and reward-model batches are right-padded: "
        "their real tokens' causal keys are all real, so they now take SDPA's `is_causal` path with no mask "
        "at all. Left-padded batches and the local bands keep one additive mask in the activations' dtype, "
        "built once per forward, where a boolean one was converted inside every layer's SDPA call. "
        "FlexAttention block masks (`torch.nn.attention.flex_attention`) would skip the masked blocks, "
        "but on this CPU with torch 2.13 they run only compiled (a first call took 79 s to compile for one "
        "shape; eager flex runs the reference math), so they are not used."
        " The gain is time, not memory: the per-layer conversion was transient (one layer's mask at a "
        "time), while the shared additive mask lives through the forward at 4 bytes an entry in fp32 (2 in "
        "bf16) where the boolean one took 1, so a left-padded batch's peak can be one fp32 mask higher "
        "(16 MiB at 4 × 1024²).", "",
        markdown_table(header, table), ""])


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: both paths run on it")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--write", type=Path, help="replace this section of the Markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        return_freed_memory()
    rows = [measure(case, batch=args.batch, seq=args.seq, rounds=args.rounds, device=device,
                    dtype=PRECISIONS[args.precision]) for case in CASES]
    command = ("python -m benchmarks.attention_masks " + " ".join(argv if argv is not None else
                                                                  __import__("sys").argv[1:])).strip()
    text = section(rows, command=command.replace(f" --write {args.write}", ""), batch=args.batch, seq=args.seq,
                   device=args.device, precision=args.precision)
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
