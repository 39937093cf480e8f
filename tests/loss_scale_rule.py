"""GradScaler's rule over a run's metrics.jsonl steps (tests/mixed_precision.sh and
tests/cuda_emu_e2e.sh): halve the scale after a skipped (overflowing) step, double it after
`interval` good steps in a row. Returns the (step, scale, expected) triples that break it."""


def scale_rule_violations(steps, interval=3):
    expected, good, violations = steps[0]["loss_scale"], 0, []
    for x in steps:
        if x["loss_scale"] != expected:
            violations.append((x["step"], x["loss_scale"], expected))
        if x.get("skipped"):
            expected, good = expected / 2, 0
        else:
            good += 1
            if good == interval:
                expected, good = expected * 2, 0
    return violations
