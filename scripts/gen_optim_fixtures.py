#!/usr/bin/env python3
"""Reference values for tests/test_optim.c, computed with torch and transformers.

Writes tests/fixtures/optim/{adamw,schedules,clip}.txt. Format: one record a line,
"<name> <count> <v1> ... <vcount>"; float32 values are written with 9 significant digits
(exact round trip), doubles with 17. Run with the project venv:
    /opt/ctune-venv/bin/python scripts/gen_optim_fixtures.py
"""
import math
import os

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "optim")


def record(lines, name, values, digits=9):
    values = [float(v) for v in values]
    lines.append(f"{name} {len(values)} " + " ".join(f"{v:.{digits}g}" for v in values))


def flat(t):
    return t.detach().reshape(-1).tolist()


def adamw_fixture():
    """Three parameters, two decayed (2-D) and one not (1-D), five steps with given grads
    and a learning rate that changes every step (as a schedule would)."""
    gen = torch.Generator().manual_seed(7)
    shapes = [("w0", (3, 4), True), ("b0", (4,), False), ("w1", (2, 3), True)]
    beta1, beta2, eps, weight_decay = 0.9, 0.95, 1e-8, 0.1
    lrs = [1e-2, 2e-2, 3e-2, 2e-2, 5e-3]
    params = [torch.randn(shape, generator=gen, dtype=torch.float32).requires_grad_() for _, shape, _ in shapes]
    groups = [
        {"params": [p for p, (_, _, decay) in zip(params, shapes) if decay], "weight_decay": weight_decay},
        {"params": [p for p, (_, _, decay) in zip(params, shapes) if not decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lrs[0], betas=(beta1, beta2), eps=eps, foreach=False)
    lines = []
    record(lines, "hparams", [beta1, beta2, eps, weight_decay], 17)
    record(lines, "lrs", lrs, 17)
    for p, (name, shape, decay) in zip(params, shapes):
        record(lines, f"{name}.shape", list(shape))
        record(lines, f"{name}.decay", [1 if decay else 0])
        record(lines, f"{name}.init", flat(p))
    for step, lr in enumerate(lrs, start=1):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, (name, _, _) in zip(params, shapes):
            # Grads of different scales so that bias correction and eps both matter.
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float32) * (10.0 ** (step - 3))
            record(lines, f"{name}.grad.{step}", flat(p.grad))
        opt.step()
        for p, (name, _, _) in zip(params, shapes):
            record(lines, f"{name}.after.{step}", flat(p))
    for p, (name, _, _) in zip(params, shapes):
        state = opt.state[p]
        record(lines, f"{name}.m", flat(state["exp_avg"]))
        record(lines, f"{name}.v", flat(state["exp_avg_sq"]))
    return lines


def lrs_of(make, steps, peak):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def schedules_fixture():
    peak, warmup, total = 3e-4, 4, 20
    n = total + 1  # steps 0..total; beyond total transformers' cosine rises again, ours clamps
    lines = []
    record(lines, "config", [peak, warmup, total], 17)
    record(lines, "constant", lrs_of(lambda o: get_constant_schedule_with_warmup(o, warmup), n, peak), 17)
    record(lines, "linear", lrs_of(lambda o: get_linear_schedule_with_warmup(o, warmup, total), n, peak), 17)
    record(lines, "cosine", lrs_of(lambda o: get_cosine_schedule_with_warmup(o, warmup, total), n, peak), 17)
    record(lines, "cosine_min0.1", lrs_of(
        lambda o: get_cosine_with_min_lr_schedule_with_warmup(o, warmup, total, min_lr_rate=0.1), n, peak), 17)
    # No warmup: step 0 already at the peak.
    record(lines, "cosine_nowarmup", lrs_of(lambda o: get_cosine_schedule_with_warmup(o, 0, total), n, peak), 17)
    # transformers has no linear decay to a floor; this is the documented formula of
    # optim/schedule.h written out independently: min + (peak - min) * (1 - p).
    ratio = 0.2
    linear_min = []
    for step in range(n):
        if step < warmup:
            linear_min.append(peak * step / warmup)
        else:
            progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
            linear_min.append(peak * ratio + (peak - peak * ratio) * (1.0 - progress))
    record(lines, "linear_min0.2", linear_min, 17)
    return lines


def clip_fixture():
    gen = torch.Generator().manual_seed(11)
    shapes = [(5, 3), (7,), (2, 2)]
    lines = []
    for case, max_norm in (("clipped", 1.0), ("unclipped", 100.0)):
        grads = [torch.randn(s, generator=gen, dtype=torch.float32) * 2.0 for s in shapes]
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = g.clone()
            record(lines, f"{case}.shape{i}", list(p.shape))
        for i, g in enumerate(grads):
            record(lines, f"{case}.grad{i}", flat(g))
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
        record(lines, f"{case}.max_norm", [max_norm], 17)
        record(lines, f"{case}.norm", [norm.item()])
        # The norm in double, as ctune sums it (torch reduces in float32).
        record(lines, f"{case}.norm_double", [math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))], 17)
        for i, p in enumerate(params):
            record(lines, f"{case}.clipped{i}", flat(p.grad))
    return lines


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, lines in (("adamw", adamw_fixture()), ("schedules", schedules_fixture()), ("clip", clip_fixture())):
        with open(os.path.join(OUT, f"{name}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
