"""The ``tamis`` command: run the retraining flow now, serve it on a schedule, or review the audit's suspects."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path

from flows import registry_cli
from tamis import processes, runtime, tracking
from tamis.contract import BAD_INPUT_EXIT, StageError

DEFAULT_CRON = "0 2 * * *"


def _absolute_paths(overrides: list[str]) -> list[str]:
    """``data.train=rel.csv`` relative to where the user stands, not to the repo."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() in ("data.train", "data.test") and value and not value.startswith("sklearn:"):
            if Path(value).exists():
                value = str(Path(value).resolve())
        out.append(f"{key}{sep}{value}")
    return out


def _moved_train(overrides: list[str], raw: dict) -> str | None:
    """The new ``data.train`` when this command points it at other data than params.yaml holds, else None."""
    current = (raw.get("data") or {}).get("train")
    moved = [v.strip() for k, _, v in (item.partition("=") for item in overrides) if k.strip() == "data.train"]
    return moved[-1] if moved and moved[-1] != current else None


def without_inherited_noise(overrides: list[str], raw: dict) -> list[str]:
    """Demo label noise is for the demo: pointing ``data.train`` at other data switches it off unless asked for."""
    keys = {item.partition("=")[0].strip() for item in overrides}
    if _moved_train(overrides, raw) and not any(k == "data.inject_noise" or k.startswith("data.inject_noise.") for k in keys):
        return overrides + ["data.inject_noise=null"]
    return overrides


def without_inherited_test(overrides: list[str], raw: dict) -> list[str]:
    """A ``data.test`` an earlier run left in params.yaml belongs to that run's table: when this command points
    ``data.train`` at a table whose columns (or label) it lacks, the test split is carved out of the new table
    instead, with a note. A test table that fits is kept (a scheduled retrain on new data, one fixed test set)."""
    from tamis.data import column_names

    train = _moved_train(overrides, raw)
    data = raw.get("data") or {}
    keys = {item.partition("=")[0].strip() for item in overrides}
    if not train or not data.get("test") or "data.test" in keys:
        return overrides
    label = next((v.strip() for k, _, v in (i.partition("=") for i in reversed(overrides)) if k.strip() == "data.label"),
                 data.get("label") or "label")
    train_columns, test_columns = column_names(train, label), column_names(data["test"], label)
    if train_columns is None or test_columns is None:
        return overrides  # unreadable: ingest names the file and the problem
    lacks = [c for c in train_columns if c not in test_columns and not c.startswith("Unnamed: ")]
    if not lacks:
        return overrides
    print(f"tamis: note: data.test ({data['test']}, from an earlier run) lacks column(s) {', '.join(map(repr, lacks[:5]))}"
          f" of the new data.train, so it is not this table's test set: the test split is carved out of {train}"
          " (set data.test to use a test table).", file=sys.stderr)
    return overrides + ["data.test=null"]


def _noise_line(result: dict) -> str:
    noise = result.get("inject_noise")
    if not noise:
        return "  labels    as given (no noise injected)"
    return (f"  labels    demo noise: {noise['rate']:.0%} of the training labels flipped ({noise['kind']}, "
            f"data.inject_noise; set it to null for real data)")


def _summary(result: dict, repo: Path) -> str:
    ev, pr = result["evaluate"], result["promote"]
    ran = [s["stage"] for s in result["stages"] if s["executed"]]
    uri = tracking.masked(tracking.tracking_uri(repo))
    champion = f"v{pr['champion_version']}" if pr["champion_version"] else "none"
    return "\n".join(
        [
            "",
            f"tamis: pipeline finished ({len(ran)} stage(s) ran: {', '.join(ran) or 'none, all up to date'})",
            f"  model     {repo / 'models' / ev['final_model']}  (registered '{pr['model_name']}' v{pr['version']},"
            f" alias challenger; champion is {champion}: {pr['reason']})",
            _noise_line(result),
            f"  metrics   {repo / 'metrics/evaluate.json'}  accuracy {ev['accuracy']:.4f}"
            f"  macro-F1 {ev['macro_f1']:.4f}  ECE {ev['ece']:.4f}",
            f"  card      {repo / 'reports/model_card.md'}",
            f"  MLflow UI mlflow ui --backend-store-uri {uri}",
            *_shared_line(result),
            *(f"  warning   {line.split(': warning: ', 1)[1]}" for s in result["stages"] for line in s.get("warnings", [])),
        ]
    )


def _shared_line(result: dict) -> list[str]:
    shared = result.get("shared_cache")
    if not shared:
        return []
    restored = [s["stage"] for s in result["stages"] if s.get("restored")]
    return [f"  DVC cache remote '{shared['remote']}': {shared['push'] or 'nothing new to push'}"
            + (f"; restored from it: {', '.join(restored)}" if restored else "")]


def review(args: argparse.Namespace) -> int:
    """``tamis review export`` / ``apply``: bad input is one sentence and exit code 2."""
    from tamis import review as lib

    repo = Path(args.repo).resolve()
    try:
        if args.review_command == "export":
            if args.top is not None and args.top < 1:
                raise StageError(f"--top {args.top}: expected a positive number of rows.")
            table = lib.export(repo, args.top)
            table.to_csv(args.out, index=False)
            print(f"tamis: {len(table)} row(s) to review in {args.out}, worst first; fill decision (keep / relabel / drop)"
                  f" and reviewed_label, then: tamis review apply {args.out}")
        else:
            done = lib.apply(repo, args.file)
            print(f"tamis: {done['decided']} decision(s) recorded ({done['decisions']}), {done['undecided']} row(s) left"
                  f" undecided; {done['path']} holds {done['fixes']} fix(es); the next run applies them"
                  " (commit the file to keep them)")
    except StageError as err:
        print(f"tamis: {err}", file=sys.stderr)
        return BAD_INPUT_EXIT
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tamis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the whole pipeline once (unchanged stages are skipped)")
    serve_p = sub.add_parser("serve", help="run the pipeline on a schedule on this machine (flow.serve)")
    init_p = sub.add_parser("init", help="start a new tamis project (git + DVC) in an empty folder")
    init_p.add_argument("dest", help="the new project folder")
    registry_cli.add_parsers(sub)
    review_p = sub.add_parser("review", help="label review: export the audit's suspects, apply a filled review")
    review_sub = review_p.add_subparsers(dest="review_command", required=True)
    export_p = review_sub.add_parser("export", help="write the rows the audit flags, worst first, for a person to review")
    export_p.add_argument("--top", type=int, metavar="N", help="only the N worst rows (default: all flagged rows)")
    export_p.add_argument("--out", default="review.csv", help="the review file to write (default: review.csv)")
    apply_p = review_sub.add_parser("apply", help="check a filled review file and record it in data/fixes/labels.csv")
    apply_p.add_argument("file", help="the filled review file (decision: keep / relabel / drop)")
    for p in (export_p, apply_p):
        p.add_argument("--repo", default=".", help="the tamis checkout (default: here)")
    for p in (run_p, serve_p):
        p.add_argument("--repo", default=".", help="the tamis checkout to run in (default: here)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a params.yaml key, e.g. --set train.epochs=20 (repeatable)")
        p.add_argument("--jobs", type=int, metavar="N",
                       help=f"processes for the audit's folds (default: one per core; sets {runtime.JOBS_ENV}, re-runs nothing)")
        p.add_argument("--threads", type=int, metavar="N",
                       help=f"CPU threads when compress times the models (default 1; sets {runtime.THREADS_ENV}, re-runs nothing)")
    serve_p.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule (default '{DEFAULT_CRON}', nightly)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars garble the log
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")  # a busy machine needs more than 20 s
    if args.command == "init":
        from flows import workspace

        try:
            dest = workspace.create(args.dest)
        except (FileExistsError, RuntimeError) as err:
            print(f"tamis: {err}", file=sys.stderr)
            return BAD_INPUT_EXIT
        print(f"tamis: new project in {dest}; edit params.yaml (data.train), then: cd {dest} && tamis run")
        return 0
    if args.command in registry_cli.COMMANDS:
        try:
            return registry_cli.run(args)
        except StageError as err:
            print(f"tamis: {err}", file=sys.stderr)
            return BAD_INPUT_EXIT
    if args.command == "review":
        return review(args)
    # parallelism is a runtime setting, not a DVC param: the stage processes inherit it, and nothing re-runs for it
    if args.jobs is not None:
        os.environ[runtime.JOBS_ENV] = str(args.jobs)
    if args.threads is not None:
        os.environ[runtime.THREADS_ENV] = str(args.threads)
    repo = Path(args.repo).resolve()
    if not (repo / "dvc.yaml").exists():
        print(f"tamis: {repo} has no dvc.yaml; point --repo at a tamis checkout.", file=sys.stderr)
        return BAD_INPUT_EXIT
    server = None
    if args.command == "run":  # the local Prefect server boots beside the imports and checks below
        from flows import local_server

        server = local_server.start()
    return _run(args, repo, server)


def _run(args: argparse.Namespace, repo: Path, server) -> int:
    from flows import local_server
    from flows.retrain import StageFailed, claim, retrain
    from tamis.config import apply_overrides, parse_params, read_raw

    try:
        raw = read_raw(repo / "params.yaml")
        overrides = without_inherited_test(without_inherited_noise(_absolute_paths(args.overrides), raw), raw)
        # a typo in --set is refused here, before the flow runs or params.yaml is touched
        params = parse_params(apply_overrides(read_raw(repo / "params.yaml"), overrides), "params.yaml with --set overrides")
        if args.command == "serve":
            # each tick is a run of its own: it takes the lock and applies the overrides under it
            retrain.serve(name="tamis-local", cron=args.cron, parameters={"repo": str(repo), "overrides": overrides})
            return 0
        with processes.interruptible(), claim(repo):  # a busy repo or a dead server: said at once, nothing written
            if server is not None:  # while the local server boots, the MLflow store opens (~1 s, cached for the flow)
                tracking.experiment_id(params.tracking.experiment, repo)
                server.ready()
            result = retrain(repo=str(repo), overrides=overrides)
    except processes.Interrupted as stop:
        print(f"tamis: stopped by {stop}; the running stage and its processes were stopped"
              " and params.yaml was put back as it was before the run.", file=sys.stderr)
        return stop.exit_code
    except StageFailed as err:
        print(f"tamis: {err}", file=sys.stderr)
        return BAD_INPUT_EXIT if err.bad_input else 1
    except StageError as err:
        print(f"tamis: {err}", file=sys.stderr)
        return BAD_INPUT_EXIT
    except local_server.ServerError as err:
        print(f"tamis: {err}", file=sys.stderr)
        return 1
    print(_summary(result, repo))
    return 0


def console() -> None:
    """The ``tamis`` command: ``main``, then the exit without the interpreter's teardown.

    Freeing what a run imported (MLflow, SQLAlchemy, pandas, Prefect) takes
    ~1.3 s after the work is done, an eighth of a no-op run. Registered first,
    the exit runs after every other exit handler (Prefect's log and event
    flushes, the local server's stop, logging's shutdown), with stdout and
    stderr flushed.
    """
    code = [1]
    atexit.register(_exit_now, code)
    try:
        code[0] = main()
    except SystemExit as stop:  # argparse's usage errors and --help
        code[0] = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C out of `tamis serve`: the shell's code for it, after the traceback
        code[0] = 130
        raise


def _exit_now(code: list[int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code[0])


if __name__ == "__main__":
    sys.exit(main())
