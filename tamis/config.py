"""Typed params: every knob of params.yaml, checked before any work starts.

An unknown key, a wrong type or an impossible value stops with one sentence
naming the key (``train.epochs``), so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tamis.errors import StageError
from tamis.yamlio import load_yaml

Fraction = Field(gt=0.0, lt=1.0)


class ConfigError(StageError):
    """A params key is unknown, mistyped or impossible."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class NoiseParams(Section):
    """Demo label noise, flipped in the train split only; the truth is kept apart."""

    rate: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    kind: Literal["uniform", "confusable"] = "uniform"
    """uniform: to any other class; confusable: towards the classes a clean model confuses."""


class DataParams(Section):
    train: str = "sklearn:digits"
    test: str | None = None
    label: str = "label"
    normalize_labels: bool = False
    """Fold labels that differ only by case or surrounding spaces into their most frequent spelling."""
    rare_classes: Literal["drop", "refuse"] = "drop"
    """A class with fewer training rows than audit.folds, or no calibration row (a class only data.test has, too),
    cannot be learned and checked: drop its rows (said in a warning, ingest's metrics and the model card), or refuse the table."""
    missing_labels: Literal["drop", "refuse"] = "drop"
    """A row with no label can be neither learned from nor scored: leave it out (said in a warning, ingest's
    metrics and the model card), or refuse the table."""
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    calib_size: float = Field(0.15, gt=0.0, lt=1.0)
    numeric: list[str] | None = None
    categorical: list[str] | None = None
    inject_noise: NoiseParams | None = None

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> DataParams:
        carved = self.calib_size + (0.0 if self.test else self.test_size)
        if carved >= 0.9:
            raise ValueError(
                f"calib_size + test_size is {carved:g}; they must leave at least 10% of rows for training"
            )
        return self


DriftAction = Literal["warn", "stop", "off"]


class DriftRule(Section):
    """A distribution statistic against the accepted data: above ``threshold``, ``action``."""

    threshold: float = Field(ge=0.0, le=1.0)
    action: DriftAction = "stop"


class DriftParams(Section):
    """The drift gate against the last accepted data (``data/accepted/profile.json``)."""

    columns: DriftAction = "stop"
    """A feature column added, removed or retyped (numeric <-> categorical)."""
    new_class: DriftAction = "stop"
    vanished_class: DriftAction = "stop"
    new_category: DriftAction = "warn"
    """A value of a categorical column the accepted data never had."""
    label: DriftRule = DriftRule(threshold=0.1, action="stop")
    """Jensen-Shannon distance (base 2) of the class shares."""
    numeric: DriftRule = DriftRule(threshold=0.15, action="stop")
    """Two-sample Kolmogorov-Smirnov statistic of each numeric column."""
    categorical: DriftRule = DriftRule(threshold=0.15, action="stop")
    """Jensen-Shannon distance (base 2) of each categorical column's category shares."""
    null_share: DriftRule = DriftRule(threshold=0.05, action="warn")
    """Rise of a column's share of missing values."""


class ValidateParams(Section):
    numeric_share: float = Field(0.9, gt=0.5, le=1.0)
    """An object column whose values parse as numbers at least this often is numeric."""
    max_null_fraction: float = Field(0.5, ge=0.0, lt=1.0)
    """Largest share of missing values allowed in a feature column (the rest are filled: numbers with the
    training median, categories with a learned "missing or unseen" code; the model card lists them)."""
    mostly_missing: Literal["drop", "refuse"] = "drop"
    """A feature column missing in more than max_null_fraction of the training rows (not listed in data.numeric /
    data.categorical): leave it out of the features with a warning, or refuse the table."""
    non_numeric: Literal["missing", "refuse"] = "missing"
    """Values of a numeric column that are not numbers ('?', 'n/a', 'rotary' among cylinder counts): read them as
    missing values (filled like any other, said in a warning and the model card; serving reads them so too), or
    refuse the table naming the column and a value."""
    identifiers: Literal["drop", "keep"] = "drop"
    """A feature column (not listed in data.numeric / data.categorical) that names rows instead of describing them:
    text with a new value in most rows (ids, names, free text) or row numbers (distinct whole numbers within a range
    at most twice the rows). drop leaves it out with a warning (a model would learn the rows, not the classes); keep
    uses it as any other column."""
    drift: DriftParams = DriftParams()


class FitParams(Section):
    """How a torch model is fitted; shared by audit, train and distill."""

    hidden: list[int] = Field(default_factory=lambda: [256, 128], min_length=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    max_steps: int = Field(20000, ge=1)
    """Optimiser steps a fit may take: on a large table fewer passes suffice (1M rows are 7,800 steps an epoch at
    batch 128), so the epochs are cut to fit. It binds only where epochs x rows / batch_size passes it (the
    audit's 25 epochs: above ~100k rows), so small and mid-sized tables train exactly as before."""
    min_steps: int = Field(0, ge=0)
    """Optimiser steps a fit takes at least: on a small table an epoch is one or two steps (128 rows at batch 128),
    so the epochs are stretched to reach this (and early stopping's patience with them). 0: the epochs as set."""

    def epochs_for(self, n_rows: int, epochs: int | None = None) -> int:
        """``epochs`` (default: this section's) stretched to ``min_steps`` and cut to ``max_steps`` on ``n_rows``
        rows, at least one."""
        per_epoch = max(1, math.ceil(n_rows / self.batch_size))
        wanted = max(self.epochs if epochs is None else epochs, math.ceil(self.min_steps / per_epoch))
        return max(1, min(wanted, self.max_steps // per_epoch))

    def patience_for(self, n_rows: int, patience: int) -> int:
        """``patience`` epochs, stretched as ``min_steps`` stretches the epochs (so it waits as many steps)."""
        return max(patience, math.ceil(patience * self.epochs_for(n_rows) / self.epochs))

    @model_validator(mode="after")
    def _positive_widths(self) -> FitParams:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive integers, got {self.hidden}")
        return self


AUDIT_ISSUE_TYPES = (
    "label",
    "outlier",
    "near_duplicate",
    "class_imbalance",
    "non_iid",
    "underperforming_group",
    "null",
    "leakage",
)
# Datalab issue types that need images (or their embeddings' metadata); a table has none.
IMAGE_ISSUE_TYPES = (
    "dark",
    "light",
    "blurry",
    "low_information",
    "odd_aspect_ratio",
    "odd_size",
    "grayscale",
    "spurious_correlations",
)


class AuditParams(FitParams):
    folds: int = Field(5, ge=2)
    repeats: int | Literal["auto"] = "auto"
    """Repeated K-fold: each train row's out-of-fold probabilities averaged over this many shuffles (auto: more
    on a small table, one on a large one)."""
    epochs: int = Field(25, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [128], min_length=1)
    models: Literal["mlp", "hgb", "both"] = "both"
    """Out-of-sample probabilities from the MLP, a HistGradientBoosting model, or their average."""
    hgb_max_iter: int = Field(200, ge=1)
    embedding_dim: int = Field(16, ge=1)
    """The penultimate layer is reduced (PCA) to this many dimensions for the k-NN checks."""
    knn_k: int = Field(10, ge=1)
    near_copy_tolerance: float = Field(0.05, ge=0.0)
    """Leakage: a near duplicate in another split counts when every number is within this many std."""
    issue_types: list[str] = Field(default_factory=lambda: list(AUDIT_ISSUE_TYPES), min_length=1)

    @field_validator("repeats", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("should be a whole number of at least 1, or 'auto'")

    @field_validator("issue_types", mode="before")
    @classmethod
    def _yaml_null(cls, value: Any) -> Any:
        """An unquoted ``null`` in YAML is None; here it names the null-values check."""
        return ["null" if v is None else v for v in value] if isinstance(value, list) else value

    @field_validator("issue_types", mode="after")
    @classmethod
    def _known_issue_types(cls, types: list[str]) -> list[str]:
        for name in types:
            if name in IMAGE_ISSUE_TYPES:
                raise ValueError(f"issue type '{name}' needs images, and a table has none")
            if name not in AUDIT_ISSUE_TYPES:
                raise ValueError(f"unknown issue type '{name}'; expected some of {', '.join(AUDIT_ISSUE_TYPES)}")
        if "label" not in types:
            raise ValueError("the list must include 'label': correct and evaluate read its flags")
        if "leakage" in types and "near_duplicate" not in types:
            raise ValueError("issue type 'leakage' needs 'near_duplicate' (its near-duplicate sets)")
        return types


FlagAction = Literal["keep", "drop", "weight"]


class CorrectParams(Section):
    label_issue: Literal["keep", "drop", "relabel", "weight"] = "drop"
    max_drop_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """Never drop more than this share of any one class."""
    outlier: FlagAction = "keep"
    near_duplicate: FlagAction = "keep"
    class_imbalance: FlagAction = "keep"
    non_iid: FlagAction = "keep"
    underperforming_group: FlagAction = "keep"
    null_values: FlagAction = "keep"
    """The null check (rows with missing values); named so because YAML reads a bare `null` key as None."""
    leakage: Literal["keep", "drop"] = "drop"
    relabel_threshold: float = Field(0.7, gt=0.0, le=1.0)
    """relabel only when the predicted label's out-of-sample probability reaches this."""
    relabel_fallback: FlagAction = "drop"
    """What relabel does with a flagged row whose predicted label is below the threshold."""
    min_weight: float = Field(0.05, gt=0.0, le=1.0)
    """weight: a flagged row's loss weight is its score for the issue, at least this."""
    calib_label_issue: Literal["keep", "drop"] = "drop"
    """Calibration rows the audit flags as mislabelled: drop them from the split that early stopping,
    calibration and the compression gate score on (a noisy label there teaches under-confidence)."""
    calib_max_drop_fraction: float = Field(0.2, ge=0.0, le=0.5)
    """Never drop more than this share of any one class of the calibration split."""
    label_issue_check: bool = True
    """Check out of fold that acting on the label issues does not lower a tree model's macro-F1; where it clearly
    does, keep the flagged train and calib rows as they came (stages/correct.py)."""


ResampleMethod = Literal[
    "none",
    "random_over",
    "smote",
    "smotenc",
    "adasyn",
    "borderline_smote",
    "random_under",
    "tomek_links",
    "smote_tomek",
    "inverse_frequency",
    "effective_number",
    "temperature",
]


class ResampleParams(Section):
    method: ResampleMethod = "temperature"
    sampling_strategy: str | float | dict[str, int] = "auto"
    k_neighbors: int = Field(5, ge=1)
    """Neighbours the SMOTE family interpolates between (each resampled class needs one more row)."""
    beta: float = Field(0.999, ge=0.0, lt=1.0)
    """Effective number of samples (Cui et al.): (1 - beta^n) / (1 - beta)."""
    temperature_start: float = Field(5.0, ge=1.0)
    """Temperature sampling: class probability ~ n_c^(1/T), T cooled from start to end over the epochs."""
    temperature_end: float = Field(1.0, ge=1.0)

    @model_validator(mode="after")
    def _cooldown_lowers_the_temperature(self) -> ResampleParams:
        if self.temperature_end > self.temperature_start:
            raise ValueError(
                f"temperature_end {self.temperature_end:g} must not exceed temperature_start "
                f"{self.temperature_start:g} (the cooldown lowers T)"
            )
        return self


class TrainParams(FitParams):
    epochs: int = Field(20, ge=1)
    min_steps: int = Field(1000, ge=0)
    patience: int = Field(10, ge=1)
    monitor: Literal["macro_f1", "nll"] = "macro_f1"
    """Early stopping watches this on the calibration split; the best epoch is kept."""
    warmup: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of the steps with a linear learning-rate warmup before the cosine decay."""
    grad_clip: float = Field(5.0, ge=0.0)
    """Largest gradient norm (0: no clipping)."""
    numeric_transform: Literal["standard", "quantile"] = "standard"
    categorical: Literal["embedding", "onehot"] = "embedding"
    embedding_dim: int = Field(8, ge=1)
    """Width of a categorical column's embedding (at most its number of categories)."""
    loss: Literal["ce", "label_smoothing", "gce", "sce", "elr"] = "elr"
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    gce_q: float = Field(0.7, gt=0.0, le=1.0)
    sce_alpha: float = Field(0.1, ge=0.0)
    sce_beta: float = Field(1.0, ge=0.0)
    elr_lambda: float = Field(3.0, ge=0.0)
    elr_beta: float = Field(0.7, ge=0.0, lt=1.0)
    mixup: float = Field(0.0, ge=0.0)
    """Mixup's Beta(a, a) parameter; 0 switches mixup off."""
    prior_correction: bool = True
    """Add log(true class priors / training priors) to the teacher's logits when predicting."""
    teacher: Literal["auto", "mlp", "hgb"] = "auto"
    """The teacher: the MLP, gradient-boosted trees, or (auto) whichever of them or their blends scores best on
    the calib split by the noise-aware likelihood."""
    hgb_max_iter: int = Field(300, ge=1)
    """Boosting iterations of the tree teacher (the calib split picks how many are kept)."""
    hgb_learning_rate: float = Field(0.1, gt=0.0)
    hgb_max_leaf_nodes: int = Field(31, ge=2)


class CalibrateParams(Section):
    method: Literal["auto", "none", "temperature", "vector", "matrix", "dirichlet", "isotonic", "histogram"] = "auto"
    """``auto`` picks the method with the lowest cross-validated NLL on the calib split."""
    folds: int = Field(5, ge=2)
    odir: float = Field(1.0, ge=0.0)
    """Off-diagonal and intercept L2 penalty of matrix / Dirichlet scaling."""
    noise_aware: bool = True
    """Fit and choose calibrators by the forward-corrected likelihood with the calib labels' estimated noise matrix."""
    max_label_noise: float = Field(0.25, gt=0.0, le=1.0)
    """The largest class-averaged label-noise rate the noise matrix may claim; past it, it is shrunk towards the
    identity (confident learning counts overlapping classes as noise)."""
    calib_rows: Literal["all", "trusted"] = "all"
    """The calib rows calibrators fit on (and the compress gate scores on): all, or those the audit trusts.
    Dropping flagged rows leaves input-dependent noise that breaks the noise model (benchmarks/calibration_noise)."""
    histogram_bins: int = Field(15, ge=2)
    bootstrap: int = Field(200, ge=0)
    """Bootstrap resamples for the 95% intervals of the calibration metrics (0: none)."""


class DistillParams(FitParams):
    hidden: list[int] = Field(default_factory=lambda: [96], min_length=1)
    patience: int = Field(10, ge=1)
    loss: Literal["kd", "dkd", "nkd"] = "kd"
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    dkd_alpha: float = Field(1.0, ge=0.0)
    dkd_beta: float = Field(8.0, ge=0.0)
    nkd_gamma: float = Field(1.5, ge=0.0)
    transfer_rows: float = Field(3.0, ge=0.0)
    """Synthetic rows per training row (mixups of two, labelled by the teacher) the distilled student also learns from."""
    calibration: Literal["auto", "none", "temperature", "vector", "matrix", "dirichlet"] = "auto"
    """The student's own calibration: parametric only, so it is baked into the ONNX graph."""


class CompressParams(Section):
    quantize: list[Literal["int8_dynamic", "int8_static"]] = Field(
        default_factory=lambda: ["int8_dynamic", "int8_static"]
    )
    prune_ratios: list[float] = Field(default_factory=lambda: [0.5])
    """Share of every hidden layer's units removed; each must be in (0, 1)."""
    finetune_epochs: int = Field(20, ge=1)
    quant_rows: int = Field(1024, ge=16)
    smooth_alpha: float = Field(0.5, ge=0.0, le=1.0)
    """SmoothQuant migration strength: how much of the inputs' range moves into the first layer's weights."""
    max_batch_shift: float = Field(1e-4, gt=0.0)
    """Gate: largest change of a variant's probabilities between batch 1 and one full batch (dynamic int8 fails it)."""
    max_f1_drop: float = Field(0.01, ge=0.0)
    f1_drop_se: float = Field(0.0, ge=0.0)
    """Gate: the macro-F1 drop plus this many paired-bootstrap standard errors must stay within max_f1_drop
    (0: the point estimate alone; the standard error is reported either way)."""
    max_f1_drop_se: float = Field(0.02, gt=0.0)
    """Gate: the largest standard error of the macro-F1 drop the gate trusts. Above it the calib split is too small
    to tell a drop within max_f1_drop from one several times larger, the variant fails and the teacher ships."""
    max_ece_rise: float = Field(0.01, ge=0.0)
    max_class_recall_drop: float = Field(0.03, ge=0.0)

    @field_validator("prune_ratios")
    @classmethod
    def _ratios_leave_units(cls, ratios: list[float]) -> list[float]:
        if any(not 0.0 < r < 1.0 for r in ratios):
            raise ValueError("each ratio must be in (0, 1): 1.0 would remove every hidden unit")
        return ratios


class PromoteParams(Section):
    model_name: str = Field("auto", min_length=1)
    """The MLflow registered model; ``auto``: ``tamis-<data source>-<label>``, so new data starts its own line."""
    min_gain: float = Field(0.0, ge=0.0)
    """The challenger's macro-F1 must beat the champion's by more than 0 and by at least this."""
    max_ece_rise: float = Field(0.01, ge=0.0)
    max_class_recall_drop: float = Field(0.05, ge=0.0, le=1.0)
    """No class's recall may drop by more (or by more than one of its rows, when one row is worth more)."""
    min_macro_f1: float | None = Field(None, ge=0.0, le=1.0)
    """Absolute floor: a challenger below it never becomes champion (null: none)."""
    max_ece: float | None = Field(None, ge=0.0, le=1.0)
    min_rows: int = Field(50, ge=1)
    """Fewest test rows, unseen by both models, that a comparison needs; with fewer the alias stays."""


class TrackingParams(Section):
    experiment: str = Field("tamis", min_length=1)


class Params(Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tracking: TrackingParams = TrackingParams()
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    audit: AuditParams = AuditParams()
    correct: CorrectParams = CorrectParams()
    resample: ResampleParams = ResampleParams()
    train: TrainParams = TrainParams()
    calibrate: CalibrateParams = CalibrateParams()
    distill: DistillParams = DistillParams()
    compress: CompressParams = CompressParams()
    promote: PromoteParams = PromoteParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)



def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    more = len(err.errors()) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''} after this one)" if more else ""
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; check its spelling against params.yaml{tail}."
    got = first.get("input")
    got_s = "" if isinstance(got, dict) else f", got {got!r}"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{source}: {key or 'params'}: {msg}{got_s}{tail}."


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def read_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} is missing: tamis needs a params file at the repository root.")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML ({str(err).splitlines()[0]}).") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}.")
    return raw or {}


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_raw(path), str(path))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (["train", "epochs"], 5); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like key.path=value.")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``key.path=value`` set (validated later, as a whole)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return out
