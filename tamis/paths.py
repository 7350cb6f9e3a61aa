"""Every file and folder the stages read and write, relative to the repository root, said once.

``dvc.yaml`` spells the same paths for DVC; ``tests/test_dag.py`` checks that
the two agree.
"""

from pathlib import Path

FINGERPRINT = Path("data/fingerprint.json")
FINGERPRINT_STAT_CACHE = Path("data/.fingerprint-stat.json")  # file stats -> md5, so unchanged inputs are not re-hashed
RAW = Path("data/raw")
TRUTH = Path("data/truth/labels.parquet")  # demo noise only: the labels before flipping (evaluate scores the audit)
VALIDATED = Path("data/validated")
SCHEMA = VALIDATED / "schema.json"
ISSUES = Path("data/audit/issues.parquet")
CORRECTED = Path("data/corrected")  # the corrected train split and the trusted calibration split
RESAMPLED = Path("data/resampled")
PROFILE = Path("data/profile.json")  # validate: the new data's drift profile
# the drift gate's reference: the profile of the last accepted run, written by the flow after promote;
# not a DVC out or dep (it must outlive the stage that compares with it; see docs/design.md)
ACCEPTED = Path("data/accepted")  # one profile per model line: <model name>.json


def accepted_profile(model_name: str) -> Path:
    """The drift gate's reference for one model line (other data, another line, another reference)."""
    return ACCEPTED / f"{model_name}.json"
LABEL_FIXES = Path("data/fixes/labels.csv")  # reviewed labels (tamis review apply), git-tracked; ingest applies them

MODELS = Path("models")
TEACHER = MODELS / "teacher.pt"
CALIBRATION = MODELS / "calibration.json"
STUDENT = MODELS / "student.pt"
VARIANTS = MODELS / "variants"
SERVING = MODELS / "serving.json"

VALIDATION_REPORT = Path("reports/validation.json")
VALIDATION_HTML = Path("reports/validation.html")
AUDIT_REPORT = Path("reports/audit.html")
MODEL_CARD = Path("reports/model_card.md")
TRAIN_CURVE = Path("plots/train_curve.csv")
RELIABILITY_PLOT = Path("plots/reliability.png")


def metrics(stage: str) -> Path:
    """``metrics/<stage>.json``: what a stage measured (a DVC metrics file)."""
    return Path("metrics") / f"{stage}.json"
