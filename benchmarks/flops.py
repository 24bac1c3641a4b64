"""How close to the machine: achieved FLOP/s of one fine-tuning step against the matmul peak.

The step is the finetune stage's: recipes/demo.yaml's model (the bundled Whisper tiny.en) and
finetune settings, its first batch of the demo's ``rsft`` subset as the stage's own loader
builds it (``pipeline.finetune.get_dataloaders``: packed 30 s windows, teacher-forcing tokens),
the stage's loss (``SpeechModel.training_loss``), backward, and fused AdamW, fp32 on the CPU.

FLOPs are counted from the model's operations by ``torch.utils.flop_counter.FlopCounterMode``
(matrix products, convolutions and attention, forward and backward; elementwise work and the
optimizer count 0), once, on a step that also serves as warm-up. Then ``--steps`` steps are
timed, each phase apart. The peak is the best FLOP/s of an n x n fp32 ``torch.matmul`` with the
same threads, measured before and after the steps (the machine is shared: its load moves both).

    python benchmarks/flops.py [--steps 3] [--matmul-size 2048] [--json OUT]
    python benchmarks/flops.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import harness
from harness import add_arguments, command_line, demo_recipe, need, setup

PHASES = ("forward", "backward", "optimizer")


def matmul_peak(n: int, repeats: int) -> float:
    """Best FLOP/s of an n x n fp32 matrix product (2 n^3 operations) over ``repeats``."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def training_step(args, recipe):
    """(step function, batch description): the stage's model, first batch, loss, optimizer."""
    import torch

    from pipeline import manifest
    from pipeline.finetune.stage import get_dataloaders
    from pipeline.models import loader

    cfg = replace(recipe.finetune, batch_size=args.batch_size or recipe.finetune.batch_size)
    seed = recipe.seed if cfg.seed is None else cfg.seed
    subset = need(args.data_root / "select" / cfg.subset / "subset.parquet", "select")
    wrapped = loader.load(replace(recipe.model, layout=cfg.layout), recipe.tree.models)
    train_loader, sampler = get_dataloaders(
        manifest.read(subset), None, wrapped, cfg, recipe.model.context_s, seed
    )
    sampler.use_epoch(0)
    batch = dict(next(iter(train_loader)))
    speech_s, input_s = float(batch.pop("speech_s")), float(batch.pop("input_s"))
    model = wrapped.model.train()
    wrapped.freeze(model, cfg.train)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

    def forward():
        with wrapped.training_context(batch):
            return wrapped.training_loss(model, batch)[0]

    def step(times: dict | None = None):
        marks = [time.perf_counter()]
        loss = forward()
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad()
        marks.append(time.perf_counter())
        if times is not None:
            for phase, start, end in zip(PHASES, marks, marks[1:], strict=False):
                times.setdefault(phase, []).append(end - start)

    shape = {
        "utterances": cfg.batch_size,
        "windows": int(batch["input_features"].shape[0]),
        "input_features": list(batch["input_features"].shape),
        "decoder_tokens": list(batch["decoder_input_ids"].shape),
        "speech_s": speech_s,
        "input_s": input_s,
        "parameters": sum(p.numel() for p in params),
        "layout": cfg.layout,
    }
    return step, forward, shape


def cpu_attention_flops():
    """FlopCounterMode's formulas for the CPU's fused attention kernels, which it does not
    count by itself (torch 2.13 maps only the CUDA ones): the same formulas as those."""
    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def count_flops(step, forward) -> dict:
    """FLOPs of one step (forward and backward), and of the forward alone per top module
    (the counter's module attribution holds for the forward pass)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = cpu_attention_flops()
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    total = counter.get_total_flops()
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        forward()
    per_module = {
        name.split(".", 1)[1]: sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if 1 <= name.count(".") <= 2
    }
    return {"total": total, "forward": counter.get_total_flops(), "forward_per_module": per_module}


def run(args: argparse.Namespace) -> dict:
    import torch

    recipe = demo_recipe(args.data_root)
    step, forward, shape = training_step(args, recipe)
    peak_before = matmul_peak(args.matmul_size, args.repeats)
    flops = count_flops(step, forward)  # also the warm-up step
    times: dict[str, list[float]] = {}
    for _ in range(args.steps):
        step(times)
    peak_after = matmul_peak(args.matmul_size, args.repeats)
    step_s = [sum(parts) for parts in zip(*(times[p] for p in PHASES), strict=True)]
    median_s = statistics.median(step_s)
    peak = max(peak_before, peak_after)
    achieved = flops["total"] / median_s
    return {
        "settings": {
            "model": recipe.model.name,
            "steps": args.steps,
            "threads": torch.get_num_threads(),
            "matmul_size": args.matmul_size,
            "command": command_line(),
            **shape,
        },
        "step_flops": flops["total"],
        "forward_flops": flops["forward"],
        "forward_flops_per_module": flops["forward_per_module"],
        "step_s": step_s,
        "step_s_median": median_s,
        "phase_s_median": {p: statistics.median(times[p]) for p in PHASES},
        "achieved_flops_per_s": achieved,
        "matmul_peak_flops_per_s": peak,
        "matmul_peak_before_after": [peak_before, peak_after],
        "fraction_of_peak": achieved / peak,
    }


def print_table(figures: dict) -> None:
    s = figures["settings"]
    print(
        f"\none fine-tuning step of {s['model']} ({s['parameters'] / 1e6:.1f}M trained "
        f"parameters): {s['utterances']} utterances ({s['speech_s']:.0f} s of speech) in "
        f"{s['windows']} {s['layout']} window(s), features {s['input_features']}, decoder "
        f"tokens {s['decoder_tokens']}; {s['threads']} threads"
    )
    total, forward = figures["step_flops"], figures["forward_flops"]
    print(
        f"counted: {total / 1e9:.1f} GFLOP per step; forward {forward / 1e9:.1f}, backward "
        f"{(total - forward) / 1e9:.1f}; forward by module:"
    )
    for name, count in figures["forward_flops_per_module"].items():
        print(f"  {name:<20} {count / 1e9:8.2f} GFLOP {100 * count / forward:5.1f}%")
    phases = figures["phase_s_median"]
    print(
        f"step: {figures['step_s_median']:.2f} s median of {s['steps']} (forward "
        f"{phases['forward']:.2f}, backward {phases['backward']:.2f}, optimizer "
        f"{phases['optimizer']:.2f})"
    )
    before, after = figures["matmul_peak_before_after"]
    print(
        f"achieved {figures['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s of a measured fp32 "
        f"matmul peak of {figures['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({s['matmul_size']}^2; before {before / 1e9:.1f}, after {after / 1e9:.1f}): "
        f"{100 * figures['fraction_of_peak']:.1f}% of the peak"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the counted one")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's finetune.batch_size")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul")
    parser.add_argument("--repeats", type=int, default=5, help="matmuls per peak measurement")
    add_arguments(parser, "batch 2, 1 timed step, 512^2 matmul")
    return setup(
        parser.parse_args(argv),
        quick={"steps": 1, "batch_size": 2, "matmul_size": 512, "repeats": 3},
    )


def main(argv=None) -> None:
    harness.main(parse_args, run, print_table, argv)


if __name__ == "__main__":
    main()
