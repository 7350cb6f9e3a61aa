"""``tamis models``, ``tamis rollback`` and ``tamis lineage``: the registry's history, read and moved by hand."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tamis import registry, tracking

COMMANDS = ("models", "rollback", "lineage")


def add_parsers(sub) -> None:
    models_p = sub.add_parser("models", help="list the registered versions: metrics, data, commit, gate, aliases")
    rollback_p = sub.add_parser("rollback", help="move champion back (to the previous champion by default)")
    rollback_p.add_argument("--to", type=int, metavar="VERSION", help="the version to make champion again")
    rollback_p.add_argument("--reason", required=True, help="why (recorded with the move)")
    lineage_p = sub.add_parser("lineage", help="data hashes, params, git commit and parent run of a version")
    lineage_p.add_argument("version", type=int)
    for p in (models_p, rollback_p, lineage_p):
        p.add_argument("--repo", default=".", help="the tamis checkout (its params name the model; default: here)")
        p.add_argument("--name", help="the registered model (default: the one promote.model_name gives)")


def _name(args: argparse.Namespace, repo: Path) -> str:
    if args.name:
        return args.name
    from tamis.config import load_params

    params = load_params(repo / "params.yaml")
    return registry.model_name(params.promote.model_name, params.data.train, params.data.label)


def run(args: argparse.Namespace) -> int:
    """Run one registry command; bad input raises StageError (the caller turns it into exit 2)."""
    from mlflow import MlflowClient

    repo = Path(args.repo).resolve()
    client = MlflowClient(tracking.tracking_uri(repo))
    name = _name(args, repo)
    if args.command == "rollback":
        event = registry.rollback(client, name, args.reason, args.to)
        print(f"tamis: '{name}' champion moved from v{event['from']} back to v{event['to']} ({event['reason']})")
        return 0
    if args.command == "lineage":
        print(json.dumps(registry.lineage(client, name, args.version), indent=2))
        return 0
    rows = registry.describe(client, name)
    if not rows:
        print(f"tamis: no versions of '{name}' yet (tracking at {tracking.masked(tracking.tracking_uri(repo))})")
        return 0
    print(f"{'version':>7}  {'aliases':<20} {'macro-F1':>8} {'ECE':>7} {'gate':>5}  {'data':<10} {'commit':<10} decision")
    for r in rows:
        aliases = ",".join(r["aliases"]) + (" (rolled back)" if r["rolled_back"] else "")
        f1 = f"{float(r['macro_f1']):.4f}" if r["macro_f1"] else "-"
        ece = f"{float(r['ece']):.4f}" if r["ece"] else "-"
        print(f"{r['version']:>7}  {aliases:<20} {f1:>8} {ece:>7} {r['gate'] or '-':>5}  {r['data'] or '-':<10} "
              f"{r['commit'] or '-':<10} {r['decision'] or '-'}")
    moves = registry.history(client, name)
    if moves:
        print("\nchampion history (oldest first):")
        for e in moves:
            print(f"  {e['at']}  {e['kind']:<8} v{e['from'] or '-'} -> v{e['to']}: {e['reason']}")
    return 0
