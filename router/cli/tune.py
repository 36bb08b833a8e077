"""`tune`: thresholds chosen for one target (escalation, accuracy or budget), written as a new policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from slm_router.router.cli.options import PolicyOpt, load_router
from slm_router.router.cli.output import console, fail, result_table


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
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
) -> None:
    """Choose per-route and OOD thresholds for one target on half the data; report on the other half."""
    import yaml

    from slm_router.router.core.costs import fallback_request_cost
    from slm_router.router.ops.evaluation import policy_thresholds, read_rows, score, split, tuned_policy
    from slm_router.router.ops.report import plot_curve
    from slm_router.router.ops.tuning import Target, TargetKind, TuningError, evaluate
    from slm_router.router.ops.tuning import tune as choose

    targets = {"max_escalation": max_escalation, "min_accuracy": min_accuracy, "budget": budget}
    chosen_targets = [(k, v) for k, v in targets.items() if v is not None]
    if len(chosen_targets) != 1:
        fail("give exactly one target: --max-escalation, --min-accuracy or --budget")
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to overwrite it")
    kind, value = chosen_targets[0]
    router = load_router(policy)
    pricing = router.policy.pricing
    try:
        texts, routes = read_rows(data)
        per_call = fallback_request_cost(router.policy, texts)
        if kind == "budget" and per_call <= 0:
            fail("--budget needs a price for the fallback: set pricing.models.fallback in the policy")
        target = (
            Target("budget", value / 1000, fallback_cost=per_call)
            if kind == "budget"
            else Target(cast(TargetKind, kind), value, fallback_cost=per_call)
        )
        scored = score(texts, routes, router.policy, router.index, router.embedder)
        tuning, held = split(scored)
        result = choose(tuning, target)
    except (OSError, ValueError, TuningError) as exc:
        fail(str(exc))
    before = evaluate(
        held, policy_thresholds(router.policy, held.routes), router.policy.router.ood_threshold, target
    )
    after = evaluate(held, result.chosen.thresholds, result.chosen.ood_threshold, target)
    out.write_text(yaml.safe_dump(tuned_policy(router.policy, result), sort_keys=False, allow_unicode=True))
    curve = out.with_suffix(".png")
    plot_curve(
        result,
        evaluate(
            tuning,
            policy_thresholds(router.policy, tuning.routes),
            router.policy.router.ood_threshold,
            target,
        ),
        curve,
    )
    rows = [
        (name, f"{b:.4g} -> {a:.4g}")
        for name, b, a in (
            ("escalation rate", before.escalation_rate, after.escalation_rate),
            ("routed accuracy", before.routed_accuracy, after.routed_accuracy),
            ("quality", before.quality, after.quality),
            (
                f"cost per 1k requests ({pricing.currency}, estimated)",
                before.cost_per_request * 1000,
                after.cost_per_request * 1000,
            ),
        )
    ]
    console.print(result_table(f"report split ({len(held.labels)} rows), target {kind}={value:g}", rows))
    console.print(f"[green]wrote[/] {out} and {curve}")
