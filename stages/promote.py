"""Promote: register the shipped model in MLflow and move the aliases.

The model is logged as an MLflow pyfunc (``stages/serving.py``, models-from-code)
that takes a DataFrame of raw columns. Every new version gets alias
``challenger``; ``champion`` moves to it only when there is no champion yet or
the new version's macro-F1 on the current test split is at least the
champion's, both scored now, through pyfunc, on the same rows (only when
there is a comparison to make). The same model
(same bytes) is registered once: a re-run with nothing changed adds no version.
Model stages are deprecated in MLflow; only aliases are used.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from tamis import dvcfiles, paths, tracking
from tamis.config import Params
from tamis.contract import StageError, read_json, stage_main
from tamis.data import read_split

DIGEST_TAG = "tamis_model_digest"


def model_digest(files: list[Path]) -> str:
    digest = hashlib.md5()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def score(model_uri: str, test: pd.DataFrame, label: str) -> float:
    """Macro-F1 of a registered pyfunc on the test split (raw columns in)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
    features = test.drop(columns=[c for c in ("row_id", label) if c in test.columns])
    pred = model.predict(features)["label"]
    from sklearn.metrics import f1_score  # here, not at the top: a no-op flow run never scores, and sklearn is slow to import

    return float(f1_score(test[label].astype(str), pred.astype(str), average="macro"))


def register(params: Params, root: Path, client, test: pd.DataFrame, parent_run_id: str | None) -> Any:
    """The registry version holding the current shipped model (registered if new)."""
    import mlflow

    serving_path = root / paths.SERVING
    onnx_path = root / paths.MODELS / read_json(serving_path)["model"]
    name = params.promote.model_name
    digest = model_digest([onnx_path, serving_path])
    found = client.search_model_versions(f"name = '{name}' and tags.{DIGEST_TAG} = '{digest}'")
    if found:
        return max(found, key=lambda v: int(v.version)), False
    evaluation = read_json(root / paths.metrics("evaluate"))
    features = test.drop(columns=["row_id", params.data.label]).head(5)
    with tracking.stage_run("promote", params, root, parent_run_id, keys=["promote", "data.label"]) as run, warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: the validated schema already refuses nulls
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(root / "tamis" / "serving.py"),
            code_paths=[str(root / "tamis")],
            artifacts={"model": str(onnx_path), "serving": str(serving_path)},
            input_example=features,
            registered_model_name=name,
        )
        version = client.get_model_version(name, str(info.registered_model_version))
        tags = {
            DIGEST_TAG: digest,
            "tamis_run_id": run.info.run_id,
            "tamis_parent_run_id": parent_run_id or run.info.run_id,
            "tamis_git_commit": tracking.git_commit(root),
            "tamis_test_macro_f1": f"{evaluation['macro_f1']:.6f}",
            "tamis_test_ece": f"{evaluation['ece']:.6f}",
        }
        # lineage: the exact accepted data (DVC's hash of data/validated) and the raw inputs
        for path, md5 in dvcfiles.lock_hashes("validate", root, "outs").items():
            tags[f"tamis_dvc_{Path(path).name}"] = md5
        for path, md5 in dvcfiles.lock_hashes("ingest", root, "deps").items():
            if path.startswith("data/"):
                tags[f"tamis_dvc_{Path(path).name}"] = md5
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    return version, True


def run(params: Params, root: str | Path = ".", parent_run_id: str | None = None) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    root = Path(root)
    tracking.experiment_id(params.tracking.experiment, root)
    client = MlflowClient()
    name = params.promote.model_name
    test = read_split(root / paths.VALIDATED, "test")
    version, new = register(params, root, client, test, parent_run_id)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    result: dict[str, Any] = {"model_name": name, "version": int(version.version), "registered": new}
    if new or (champion is not None and champion.version != version.version):
        # a new version must load and predict through pyfunc before any alias points at it
        result["challenger_macro_f1"] = score(f"models:/{name}/{version.version}", test, params.data.label)
    client.set_registered_model_alias(name, "challenger", version.version)
    if champion is None:
        moved, reason = True, "no champion yet"
    elif champion.version == version.version:
        moved, reason = False, "this version is already the champion"
    else:
        challenger_f1 = result["challenger_macro_f1"]
        try:
            champion_f1 = score(f"models:/{name}@champion", test, params.data.label)
        except Exception as err:  # a champion that cannot read today's columns cannot be compared
            raise StageError(
                f"champion version {champion.version} of '{name}' cannot score the current test split "
                f"({type(err).__name__}); compare by hand before moving the alias."
            ) from None
        result["champion_macro_f1"] = champion_f1
        moved = challenger_f1 >= champion_f1
        reason = f"challenger macro-F1 {challenger_f1:.4f} {'>=' if moved else '<'} champion {champion_f1:.4f}"
    if moved:
        client.set_registered_model_alias(name, "champion", version.version)
    result.update(champion_moved=moved, reason=reason)
    result["champion_version"] = int(client.get_model_version_by_alias(name, "champion").version)
    return result


def say(result: dict[str, Any]) -> None:
    print(
        f"tamis promote: '{result['model_name']}' v{result['version']} is challenger"
        f"{' (newly registered)' if result['registered'] else ''}; champion is v{result['champion_version']}: {result['reason']}"
    )


if __name__ == "__main__":
    # the flow's last step, run alone: registers models/ and moves the aliases (no DVC stage: it writes no files)
    stage_main("promote", lambda params: say(run(params)))
