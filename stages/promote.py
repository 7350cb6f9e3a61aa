"""Promote: register the shipped model in MLflow and decide, through the blessing gate, whether it is champion.

The flow's last step, not a DVC stage (it writes no files; ``python -m
stages.promote`` runs it alone). The model is logged as an MLflow pyfunc
(``tamis/serving.py``, models-from-code, with the ``tamis`` package as its
code) with the digests of every row it trained or calibrated on. Every new
version gets alias ``challenger``; ``champion`` moves only through the gate of
``tamis/promotion.py``, both models scored through their pyfunc in separate
interpreters (each with its own logged code) on test rows neither saw. Every
decision, with both models' numbers and the rows used, is kept as version
tags and as ``promotion.json`` in the version's run. The same model (same
bytes) is registered once: a re-run with nothing changed adds no version and
decides nothing again. Only aliases are used, never the deprecated stages.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import dvcfiles, paths, registry, tracking
from tamis.config import Params
from tamis.contract import read_json, stage_main
from tamis.data import ROW_ID, Schema, read_split, user_names
from tamis.promotion import Decision, Scores, decide, row_digests, score

SEEN_ROWS = "lineage/seen_rows.parquet"  # in each version's run: digests of the rows it trained or calibrated on


def model_digest(files: list[Path]) -> str:
    digest = hashlib.md5()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def schema_digest(schema: Schema) -> str:
    """What a model can score: its label, feature columns and classes."""
    key = {"label": schema.label, "features": sorted(schema.features), "classes": sorted(map(str, schema.classes))}
    return hashlib.md5(json.dumps(key).encode()).hexdigest()


def seen_rows(root: Path, schema: Schema) -> np.ndarray:
    """Digests of every row the pipeline trained or calibrated on (validated train + calib, before correction)."""
    frames = [read_split(root / paths.VALIDATED, split) for split in ("train", "calib")]
    return np.concatenate([row_digests(f, schema.features) for f in frames])


def served_signature(features: pd.DataFrame, used: set[str], onnx_path: Path, root: Path):
    """The registered model's signature: every column by name, of any type (the model reads a user's table as
    ``pd.read_csv`` gives it: whole numbers where training saw floats, booleans where it saw text; MLflow's
    inferred types refused both), required where the model uses it; the outputs as the model gives them."""
    from mlflow.models.signature import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec
    from mlflow.types.schema import Schema as ColumnSchema

    from tamis.serving import Predictor

    inputs = ColumnSchema([ColSpec(AnyType(), str(c), required=c in used) for c in features.columns])
    outputs = infer_signature(features, Predictor(onnx_path, read_json(root / paths.SERVING)).predict(features)).outputs
    return ModelSignature(inputs=inputs, outputs=outputs)


def register(params: Params, root: Path, client, name: str, parent_run_id: str | None) -> tuple[Any, bool]:
    """The registry version holding the current shipped model (registered if new, with its lineage)."""
    import mlflow

    onnx_path = root / paths.MODELS / read_json(root / paths.SERVING)["model"]
    digest = model_digest([onnx_path, root / paths.SERVING])
    found = [v for v in registry.versions(client, name) if v.tags.get(registry.DIGEST_TAG) == digest]
    if found:
        return found[-1], False
    schema = Schema.load(root / paths.SCHEMA)
    evaluation = read_json(root / paths.metrics("evaluate"))
    gate = read_json(root / paths.metrics("compress"))["gate"]
    test = read_split(root / paths.VALIDATED, "test")
    features = test.drop(columns=[ROW_ID, params.data.label]).head(5)
    renames = user_names(features.columns)
    features = features.rename(columns=renames)  # the served table's names are the user's
    keys = ["promote", "data.label", "data.train", "data.test"]
    with tracking.stage_run("promote", params, root, parent_run_id, keys=keys) as run, warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: the validated schema already refuses nulls
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(root / "tamis" / "serving.py"),
            code_paths=[str(root / "tamis")],
            artifacts={"model": str(onnx_path), "serving": str(root / paths.SERVING)},
            input_example=features,
            signature=served_signature(features, {renames.get(f, f) for f in schema.features}, onnx_path, root),
            registered_model_name=name,
        )
        with tempfile.TemporaryDirectory() as tmp:
            seen = Path(tmp) / Path(SEEN_ROWS).name
            pd.DataFrame({"digest": seen_rows(root, schema)}).to_parquet(seen, index=False)
            mlflow.log_artifact(str(seen), str(Path(SEEN_ROWS).parent))
        version = client.get_model_version(name, str(info.registered_model_version))
        tags = {
            registry.DIGEST_TAG: digest,
            "tamis_run_id": run.info.run_id,
            "tamis_parent_run_id": parent_run_id or run.info.run_id,
            "tamis_git_commit": tracking.git_commit(root),
            "tamis_test_macro_f1": f"{evaluation['macro_f1']:.6f}",
            "tamis_test_ece": f"{evaluation['ece']:.6f}",
            "tamis_gate_passed": str(bool(gate["passed"])).lower(),
            "tamis_schema_digest": schema_digest(schema),
            "tamis_label": schema.label,
            "tamis_features": ",".join(schema.features)[:4000],
            "tamis_noise_injected": str(params.data.inject_noise is not None).lower(),
        }
        # lineage: the exact accepted data (DVC's hash of data/validated) and the raw inputs
        for path, md5 in dvcfiles.lock_hashes("validate", root, "outs").items():
            tags[f"tamis_dvc_{Path(path).name}"] = md5
        for path, md5 in dvcfiles.lock_hashes("ingest", root, "deps").items():
            if path.startswith("data/"):
                tags[f"tamis_dvc_{Path(path).name}"] = md5
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    return client.get_model_version(name, version.version), True


def champion_seen(champion, tmp: Path) -> np.ndarray | None:
    """Digests of the rows the champion trained or calibrated on, from its run; None when it recorded none."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=SEEN_ROWS, dst_path=str(tmp))
    except Exception:  # an older version without lineage, or its artifacts are gone
        return None
    return pd.read_parquet(local)["digest"].to_numpy(np.uint64)


def against_champion(champion, test: pd.DataFrame, context: dict[str, Any]) -> tuple[Decision | None, dict]:
    """(a decision already forced, or None; the comparison record) for the challenger against ``champion``."""
    label, schema, uri = context["label"], context["schema"], context["tracking_uri"]
    record: dict[str, Any] = {"champion_version": int(champion.version)}
    if champion.tags.get("tamis_schema_digest") != schema_digest(schema):
        return Decision(
            False,
            f"champion v{champion.version} scores other columns or classes; this version stays challenger "
            f"(set promote.model_name to start a new model line)",
        ), record
    with tempfile.TemporaryDirectory() as tmp:
        theirs = champion_seen(champion, Path(tmp))
    if theirs is None:
        return Decision(False, f"champion v{champion.version} recorded no training rows, so no fair comparison exists"), record
    digests = row_digests(test, schema.features)
    unseen = ~np.isin(digests, np.concatenate([theirs, context["ours"]]))
    record.update(test_rows=len(test), excluded_rows=int((~unseen).sum()), compared_rows=int(unseen.sum()))
    if unseen.sum() < context["min_rows"]:
        return Decision(
            False,
            f"only {int(unseen.sum())} test rows are unseen by both models (promote.min_rows {context['min_rows']}); "
            f"the alias stays",
        ), record
    rows = test[unseen]
    features = rows.drop(columns=[ROW_ID, label])
    try:
        champ = registry.predict_isolated(f"models:/{champion.name}/{champion.version}", features, uri)
    except Exception as err:  # noqa: BLE001 - whatever stops the champion from scoring, the alias stays
        return Decision(False, f"champion v{champion.version} could not score today's test rows ({err})"), record
    record["champion"] = score(champ, rows[label]).as_dict()
    chall = context["challenger_pred"].loc[unseen]
    record["challenger"] = score(chall, rows[label]).as_dict()
    return None, record


def run(params: Params, root: str | Path = ".", parent_run_id: str | None = None) -> dict[str, Any]:
    from mlflow import MlflowClient

    root = Path(root)
    tracking.experiment_id(params.tracking.experiment, root)
    client = MlflowClient()
    name = registry.model_name(params.promote.model_name, params.data.train, params.data.label)
    label = params.data.label
    version, new = register(params, root, client, name, parent_run_id)
    result: dict[str, Any] = {"model_name": name, "version": int(version.version), "registered": new}
    if not new:
        champion = registry.by_alias(client, name, registry.CHAMPION)
        result.update(
            champion_moved=False,
            champion_version=int(champion.version) if champion else None,
            reason=f"this model is already v{version.version} (decided then: {version.tags.get('tamis_promotion_reason', 'n/a')})",
        )
        return result
    schema = Schema.load(root / paths.SCHEMA)
    test = read_split(root / paths.VALIDATED, "test").reset_index(drop=True)
    uri = tracking.tracking_uri(root)
    # a new version must load and predict through pyfunc, with its logged code, before any alias points at it
    pred = registry.predict_isolated(f"models:/{name}/{version.version}", test.drop(columns=[ROW_ID, label]), uri)
    client.set_registered_model_alias(name, registry.CHALLENGER, version.version)
    gate_passed = version.tags.get("tamis_gate_passed") == "true"
    champion = registry.by_alias(client, name, registry.CHAMPION)
    record: dict[str, Any] = {"challenger_version": int(version.version), "gate_passed": gate_passed}
    if not gate_passed:  # never champion, first version included; nothing to compare
        decision = decide(None, None, False, params.promote)
    elif champion is None:
        ours = score(pred, test[label])
        record.update(challenger=ours.as_dict(), compared_rows=len(test))
        decision = decide(ours, None, gate_passed, params.promote)
    else:
        context = {
            "label": label, "schema": schema, "tracking_uri": uri, "min_rows": params.promote.min_rows,
            "ours": seen_rows(root, schema), "challenger_pred": pred,
        }
        forced, compared = against_champion(champion, test, context)
        record.update(compared)
        decision = forced or decide(
            Scores(**compared["challenger"]), Scores(**compared["champion"]), gate_passed, params.promote
        )
    record.update(moved=decision.move, reason=decision.reason, **decision.details)
    if decision.move:
        registry.move_champion(client, name, int(version.version), decision.reason)
    for key, value in {
        "tamis_promotion": registry.CHAMPION if decision.move else registry.CHALLENGER,
        "tamis_promotion_reason": decision.reason[:4000],
        "tamis_compared_rows": str(record.get("compared_rows", 0)),
    }.items():
        client.set_model_version_tag(name, version.version, key, value)
    client.log_dict(version.run_id, record, "promotion.json")
    champ = registry.by_alias(client, name, registry.CHAMPION)
    result.update(
        champion_moved=decision.move,
        champion_version=int(champ.version) if champ else None,
        reason=decision.reason,
        challenger_macro_f1=record.get("challenger", {}).get("macro_f1"),
        champion_macro_f1=record.get("champion", {}).get("macro_f1"),
        compared_rows=record.get("compared_rows"),
        excluded_rows=record.get("excluded_rows", 0),
    )
    return result


def say(result: dict[str, Any]) -> None:
    champion = f"v{result['champion_version']}" if result["champion_version"] else "none"
    print(
        f"tamis promote: '{result['model_name']}' v{result['version']}"
        f"{' registered, alias challenger' if result['registered'] else ''}; champion is {champion}: {result['reason']}"
    )


if __name__ == "__main__":
    stage_main("promote", lambda params: say(run(params)))
