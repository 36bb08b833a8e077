"""`tune`: thresholds chosen for one target (escalation, accuracy, budget, in-scope false escalation or
out-of-scope recall), written as a new policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from slm_router.router.cli.options import PolicyOpt, load_router
from slm_router.router.cli.output import console, fail, need_extra, result_table, usage


def tune(
    data: Annotated[Path, typer.Argument(help="JSONL rows: text, route (or `oos`).")],
    out: Annotated[Path, typer.Option(help="Where to write the tuned policy YAML.")],
    policy: PolicyOpt = None,
    max_escalation: Annotated[
        float | None, typer.Option(help="Target: at most this share escalated.")
    ] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(help="Target: local answers right this often.")
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(help="Target: cost per 1,000 requests, in the policy's pricing.currency."),
    ] = None,
    max_false_escalation: Annotated[
        float | None,
        typer.Option(help="Target: at most this share of in-scope requests escalated (shift-proof)."),
    ] = None,
    min_oos_recall: Annotated[
        float | None,
        typer.Option(help="Target: at least this share of out-of-scope requests escalated (shift-proof)."),
    ] = None,
    expected_oos_share: Annotated[
        float | None,
        typer.Option(
            help="Share of out-of-scope traffic you expect live; escalation, accuracy and budget targets "
            "and the report are reweighted to it (default: the data file's own share)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
) -> None:
    """Choose per-route and out-of-scope thresholds for one target on half the data; report on the other."""
    import yaml

    from slm_router.router.core.costs import fallback_request_cost
    from slm_router.router.ops.evaluation import (
        policy_ood_threshold,
        policy_thresholds,
        read_rows,
        score,
        split,
        tuned_policy,
    )
    from slm_router.router.ops.report import plot_curve
    from slm_router.router.ops.tuning import Target, TargetKind, TuningError, evaluate
    from slm_router.router.ops.tuning import tune as choose

    targets = {
        "max_escalation": max_escalation,
        "min_accuracy": min_accuracy,
        "budget": budget,
        "max_false_escalation": max_false_escalation,
        "min_oos_recall": min_oos_recall,
    }
    chosen_targets = [(k, v) for k, v in targets.items() if v is not None]
    if len(chosen_targets) != 1:
        usage(
            "give exactly one target: --max-escalation, --min-accuracy, --budget, --max-false-escalation "
            "or --min-oos-recall"
        )
    if out.exists() and not force:
        usage(f"{out} exists; pass --force to overwrite it")
    kind, value = chosen_targets[0]
    need_extra("eval", "`slm-router tune` (its curve picture)")
    router = load_router(policy)
    pricing = router.policy.pricing
    try:
        texts, routes = read_rows(data)
        per_call = fallback_request_cost(router.policy, texts)
        if kind == "budget" and per_call <= 0:
            fail("--budget needs a price for the fallback: set pricing.models.fallback in the policy")
        target = Target(
            cast(TargetKind, kind),
            value / 1000 if kind == "budget" else value,
            fallback_cost=per_call,
            oos_share=expected_oos_share,
        )
        scored = score(texts, routes, router.policy, router.index, router.embedder)
        tuning, held = split(scored)
        result = choose(tuning, target)
        before_ood = policy_ood_threshold(router.policy, held)
        before = evaluate(held, policy_thresholds(router.policy, held.routes), before_ood, target)
        after = evaluate(held, result.chosen.thresholds, result.chosen.ood_threshold, target)
        baseline = evaluate(tuning, policy_thresholds(router.policy, tuning.routes), before_ood, target)
    except (OSError, ValueError, TuningError) as exc:
        fail(str(exc))
    tuned = tuned_policy(router.policy, result, scored.ood_key)
    out.write_text(yaml.safe_dump(tuned, sort_keys=False, allow_unicode=True))
    curve = out.with_suffix(".png")
    plot_curve(result, baseline, curve)
    share = (
        f"{expected_oos_share:.0%} out of scope (expected)"
        if expected_oos_share is not None
        else f"{held.oos_share:.1%} out of scope (the file's)"
    )
    rows = [
        (name, f"{b:.4g} -> {a:.4g}")
        for name, b, a in (
            ("escalation rate", before.escalation_rate, after.escalation_rate),
            ("routed accuracy", before.routed_accuracy, after.routed_accuracy),
            ("quality", before.quality, after.quality),
            ("in-scope false escalation", before.in_scope_false_escalation, after.in_scope_false_escalation),
            ("out-of-scope recall", before.oos_recall, after.oos_recall),
            (
                f"cost per 1k requests ({pricing.currency}, estimated)",
                before.cost_per_request * 1000,
                after.cost_per_request * 1000,
            ),
        )
        if b is not None and a is not None
    ]
    console.print(
        result_table(f"report split ({len(held.labels)} rows at {share}), target {kind}={value:g}", rows)
    )
    console.print(
        f"{scored.ood_key} {result.chosen.ood_threshold:.4g}; per-route thresholds in {out}. "
        "Shares within a class (false escalation, recall) do not move with the out-of-scope share."
    )
    console.print(f"[green]wrote[/] {out} and {curve}")
