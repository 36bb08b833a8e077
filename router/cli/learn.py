"""`learn`: escalations and operator labels turned into route examples, compared before and after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from slm_router.policies import DEFAULT_POLICY
from slm_router.router.cli.options import DbOpt, PolicyOpt, load_router, open_decision_log
from slm_router.router.cli.output import console, err, fail, progress, result_table, usage


def learn(
    heldout: Annotated[Path, typer.Option(help="Labelled JSONL (text, route) to compare before/after on.")],
    policy: PolicyOpt = None,
    labels: Annotated[
        Path | None, typer.Option(help="Operator-labelled JSONL (text, route) to learn from.")
    ] = None,
    from_log: Annotated[
        bool, typer.Option(help="Learn logged escalations, labelled by the fallback model as teacher.")
    ] = False,
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(help="Most recent logged decisions to look at.")] = 1000,
    out: Annotated[Path | None, typer.Option(help="Where --write puts the new policy YAML.")] = None,
    head_data: Annotated[
        Path | None,
        typer.Option(
            help="With --from-log: write teacher sentiment labels here (for `train sentiment --extra`)."
        ),
    ] = None,
    write: Annotated[bool, typer.Option(help="Write the new policy (without it: report only).")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
) -> None:
    """Turn escalations into route examples, refit, and show escalation and accuracy before and after."""
    import yaml

    from slm_router.router.core.index import load_utterances
    from slm_router.router.ops.decision_log import DecisionLogError
    from slm_router.router.ops.evaluation import read_rows
    from slm_router.router.ops.learning import Example, compare, learnable_rows, sentiment_rows, teach
    from slm_router.router.ops.training import read_labelled

    if labels is None and not from_log:
        usage("give --labels FILE (operator labels) and/or --from-log (teacher-labelled escalations)")
    if write and out is None:
        usage("--write needs --out: where to write the new policy")
    if write and out is not None and out.exists() and not force:
        live = out.resolve() == (policy or DEFAULT_POLICY).resolve()
        usage(f"{out} {'is the policy in use' if live else 'exists'}; pass --force to overwrite it")
    try:
        log_rows = open_decision_log(policy, db).tail(limit) if from_log else []
    except DecisionLogError as exc:
        fail(str(exc))
    router = load_router(policy)
    try:
        examples = (
            [Example(text=t, route=r, source="operator") for t, r in read_labelled(labels, ("route",))]
            if labels
            else []
        )
        skipped = 0
        if from_log:
            if router.fallback is None:
                fail("--from-log needs the policy's fallback model as teacher (fallback.enabled)")
            rows = learnable_rows(log_rows)
            if not rows:
                err.print("no logged escalations with text (privacy.log_text must be on to learn from them)")
            with progress(len(rows), "teacher labelling escalations", True) as tick:
                taught, skipped = teach(rows, router.fallback, load_utterances(router.policy), progress=tick)
            examples += taught
            if head_data is not None:
                routes = {n for n, r in router.policy.routes.items() if r.agent == "sentiment"}
                prompt = next((router.policy.routes[n].fallback_prompt for n in sorted(routes)), None)
                labelled = sentiment_rows(taught, routes, router.fallback, prompt)
                head_data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in labelled))
                console.print(f"[green]wrote[/] {len(labelled)} sentiment rows to {head_data}")
        result, data = compare(router.policy, examples, router.embedder, read_rows(heldout), skipped)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    finally:
        router.close()
    rows_ = [
        (name, f"{getattr(result.before, key)} -> {getattr(result.after, key)}")
        for name, key in (
            ("in-scope accuracy", "in_scope_accuracy"),
            ("escalation rate", "escalation_rate"),
            ("routed accuracy", "routed_accuracy"),
            ("OOS recall", "oos_recall"),
            ("ECE", "ece"),
        )
    ]
    learned = ", ".join(f"{r} +{n}" for r, n in sorted(result.learned.items())) or "nothing new"
    rows_ += [("learned examples", learned), ("not learned", str(result.skipped))]
    console.print(result_table(f"held-out {heldout} ({result.before.rows} rows)", rows_))
    if write and out is not None:
        out.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        console.print(f"[green]wrote[/] {out}")
    else:
        console.print("[dim]report only: pass --write --out FILE to save the new policy[/]")
