"""Tables: load a source, split it, infer its schema, encode it for torch.

Row identity: every table carries ``row_id``, the 0-based position of the row in
the table it was read from, so any row of any split traces back to the input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import paths
from tamis.contract import StageError, input_file, note, read_json

SKLEARN_SETS = ("digits", "iris", "wine", "breast_cancer")
ROW_ID = "row_id"
SPLITS = ("train", "calib", "test")
# Columns tamis adds beside the user's features; never fed to a model.
META_COLUMNS = (ROW_ID, "split", "weight", "original_label", "action", "reason", "synthetic")
# a label column with more distinct values than both of these is an id or a measurement, not classes
MAX_ID_LIKE_CLASSES, ID_LIKE_SHARE = 20, 0.5


def load_source(source: str, label: str, key: str = "data.train") -> pd.DataFrame:
    """Read ``sklearn:<name>``, a CSV or a Parquet file into a DataFrame."""
    if source.startswith("sklearn:"):
        name = source.split(":", 1)[1]
        if name not in SKLEARN_SETS:
            raise StageError(
                f"{key}: unknown scikit-learn dataset '{name}'; expected one of {', '.join(SKLEARN_SETS)}."
            )
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
        frame = bunch.frame.rename(columns={"target": label})
        frame.columns = [str(c) for c in frame.columns]
        return frame
    path = input_file(source, key)
    kind = table_kind(path)
    try:
        if kind == "csv":
            sep = csv_separator(path, source, key)
            frame, encoding = read_csv_text(path, source, sep=sep)
            frame = names_stripped(frame, source)
            if sep == ";":
                frame = decimal_commas(frame, source)
            frame = labels_as_written(frame, path, sep, label, encoding)
        elif kind == "parquet":
            frame = pd.read_parquet(path)
            frame.columns = [str(c) for c in frame.columns]  # a CSV's header is text already
            frame = names_stripped(frame, source)
        else:
            raise StageError(
                f"{key}: '{source}' should be a .csv, .tsv or .txt file (or one compressed as "
                f"{', '.join(COMPRESSED)}) or a .parquet file."
            )
    except StageError:
        raise
    except Exception as err:  # a parser's own words are the useful part
        raise StageError(f"{key}: could not read '{source}' ({type(err).__name__}: {err}).") from None
    if frame.empty:
        raise StageError(f"{key}: '{source}' has no rows.")
    if label in META_COLUMNS and label in frame.columns:
        raise StageError(
            f"data.label: the label column '{label}' in {source} has a name tamis keeps for its own columns"
            f" ({', '.join(META_COLUMNS)}); rename it."
        )
    return frame


CSV_SUFFIXES = (".csv", ".tsv", ".txt")
COMPRESSED = (".gz", ".bz2", ".xz", ".zip")  # what pandas reads by the file's suffix
ENCODINGS = ("utf-8", "cp1252", "latin-1")  # tried in turn; latin-1 reads any bytes


def table_kind(path: Path) -> str | None:
    """``"csv"`` for a CSV (``.csv``, ``.tsv``, ``.txt``, also compressed: ``train.csv.gz``), ``"parquet"``, or None."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in CSV_SUFFIXES:
        return "csv"
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else None


def table_stem(path: Path) -> str:
    """A table file's name without its suffixes: ``train`` of ``train.csv`` and of ``train.csv.gz``."""
    name = path.name
    if table_kind(path) == "csv" and path.suffix.lower() in COMPRESSED:
        name = name[: -len(path.suffix)]
    return Path(name).stem


def open_text(path: Path, encoding: str = "utf-8", errors: str = "strict"):
    """A CSV file opened as text, decompressed by its suffix as pandas does (a .zip holds one file)."""
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    suffix = path.suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:  # the open member keeps the file open until it is closed itself
            member = archive.open(archive.namelist()[0])
        return io.TextIOWrapper(member, encoding=encoding, errors=errors, newline="")
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)
    return opener(path, "rt", encoding=encoding, errors=errors, newline="")


def read_csv_text(path: Path, source: str, say: bool = True, **kwargs: Any) -> tuple[pd.DataFrame, str]:
    """(``pd.read_csv(path, **kwargs)``, the encoding it was read in): UTF-8, or else Windows-1252 / Latin-1 with a
    note, as spreadsheets in Western Europe save a CSV (``é`` as one byte, which UTF-8 refuses)."""
    for encoding in ENCODINGS:
        try:
            frame = pd.read_csv(path, encoding=encoding, **kwargs)
        except UnicodeDecodeError:
            continue
        if encoding != "utf-8" and say:
            note(f"{source} is not UTF-8; read it as {encoding}.")
        return frame, encoding
    raise AssertionError("latin-1 decodes any bytes")


def stripped_names(columns) -> dict[str, str]:
    """Column names with spaces around them (a header written ``a, b, label``) -> the names without, where that
    keeps every name distinct: ``label`` is what a user reads in such a header and passes as ``data.label``."""
    renames = {c: c.strip() for c in map(str, columns) if c != c.strip()}
    names = [renames.get(c, c) for c in map(str, columns)]
    return renames if len(set(names)) == len(names) else {}


def names_stripped(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """``frame`` with :func:`stripped_names` applied, and a note naming them (serving matches them either way)."""
    renames = stripped_names(frame.columns)
    if renames:
        note(f"{source}'s column names {', '.join(map(repr, renames))} are read without their spaces.")
    return frame.rename(columns=renames) if renames else frame


def reserved_renames(columns) -> dict[str, str]:
    """Feature columns named like a column tamis adds (``META_COLUMNS``: a 'weight' or 'split' feature is common),
    and the names tamis reads them by: the name with '_' appended until it is free. Serving renames the same way
    (:func:`as_trained`), so a served table keeps the user's names."""
    taken, out = set(columns), {}
    for column in columns:
        if column in META_COLUMNS:
            new = f"{column}_"
            while new in taken:
                new += "_"
            taken.add(new)
            out[column] = new
    return out


def user_names(columns) -> dict[str, str]:
    """The inverse of :func:`reserved_renames` on ``columns``: tamis's name of a feature -> the user's."""
    return {c: c.rstrip("_") for c in columns if c.rstrip("_") in META_COLUMNS and c != c.rstrip("_")
            and c.rstrip("_") not in columns}


def as_trained(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """A served table with its feature columns under the names training read them by: without the spaces around
    them (:func:`stripped_names`), and renamed off tamis's own column names (:func:`reserved_renames`)."""
    renames = {c: name for c, name in stripped_names(frame.columns).items() if name in features and name not in frame.columns}
    renames |= {f.rstrip("_"): f for f in features
                if f not in frame.columns and f.rstrip("_") in META_COLUMNS and f.rstrip("_") in frame.columns}
    return frame.rename(columns=renames) if renames else frame


ISO_DATE = r"^\s*\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\s*$"


def looks_like_dates(s: pd.Series, share: float) -> bool:
    """Text whose values are ISO dates or times (2012-01-31, 2012-01-31 08:00) at least ``share`` of the time.
    Only ISO: 01/02/2012 is January or February depending on who wrote it."""
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_bool_dtype(s):
        return False
    values = s.dropna()
    return bool(len(values)) and float(values.astype(str).str.match(ISO_DATE).mean()) >= share


NUMERIC_DATE = r"^\s*(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})\s*$"  # 31/12/2020, 12/31/2020, 31.12.20


def date_format(s: pd.Series, share: float) -> str | None:
    """The format of a text column of dates (at least ``share`` of its values): ``"ISO8601"``, or day-first or
    month-first numbers (31/12/2020, 12/31/2020, 31.12.20) where the column itself says which: a first field above
    12 and no second one, or the other way round. None for no dates, or where day and month cannot be told apart
    (every field up to 12): 01/02/2012 is January or February depending on who wrote it."""
    if looks_like_dates(s, share):
        return "ISO8601"
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_bool_dtype(s):
        return None
    values = s.dropna().astype(str)
    parts = values.str.extract(NUMERIC_DATE)
    if not len(values) or parts[0].notna().mean() < share:
        return None
    parts = parts.dropna()
    first, second, widths = parts[0].astype(int), parts[2].astype(int), set(parts[3].str.len())
    if len(widths) > 1:
        return None
    sep, year = parts[1].mode()[0], "%Y" if widths == {4} else "%y"
    if (first > 12).any() and not (second > 12).any():
        return f"%d{sep}%m{sep}{year}"
    if (second > 12).any() and not (first > 12).any():
        return f"%m{sep}%d{sep}{year}"
    return None


def infinite(values: np.ndarray) -> np.ndarray:
    """Which float values lie past +-1e300 (inf): no model takes them, so validate and serving read them as missing."""
    with np.errstate(invalid="ignore"):
        return ~np.isnan(values) & ~((values >= -1e300) & (values <= 1e300))


def as_numbers(s: pd.Series, date_format: str | None = None) -> pd.Series:
    """A numeric column as float64, the same in validate and serving: a date or time (a timestamp, text in
    ``date_format``, or ISO text) as days since 1970-01-01 (UTC), text that is not a number and +-inf as missing
    (``validate.non_numeric``'s default)."""
    if pd.api.types.is_datetime64_any_dtype(s):
        if s.dt.tz is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return ((s - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)).astype(np.float64)
    if date_format and not pd.api.types.is_numeric_dtype(s):
        return as_numbers(parse_dates(s, date_format))
    numbers = pd.to_numeric(s, errors="coerce")
    if not pd.api.types.is_numeric_dtype(s) and numbers.isna().all() and looks_like_dates(s, 0.5):
        return as_numbers(parse_dates(s))  # serving: a date column as the user's text
    numbers = numbers.astype(np.float64)
    return numbers.mask(infinite(numbers.to_numpy()))  # +-inf: missing, as validate reads it


def parse_dates(s: pd.Series, date_format: str = "ISO8601") -> pd.Series:
    """Date text (ISO, or ``date_format``) as UTC timestamps (a value that is not one: missing)."""
    return pd.to_datetime(s.astype("string").str.strip(), errors="coerce", format=date_format, utc=True)


def column_names(source: str, label: str) -> list[str] | None:
    """A table's column names from its header alone; None when it cannot be read (the stages then say why)."""
    try:
        if source.startswith("sklearn:"):
            return list(load_source(source, label).columns)
        path = input_file(source, "data")
        if table_kind(path) == "csv":
            sep = csv_separator(path, source, "data", say=False)
            names = [str(c) for c in read_csv_text(path, source, say=False, nrows=0, sep=sep)[0].columns]
            stripped = stripped_names(names)
            return [stripped.get(c, c) for c in names]
        if table_kind(path) == "parquet":
            import pyarrow.parquet as pq

            return [str(c) for c in pq.read_schema(path).names if not str(c).startswith("__index_level_")]
    except Exception:
        return None
    return None


def labels_as_written(frame: pd.DataFrame, path: Path, sep: str, label: str, encoding: str = "utf-8") -> pd.DataFrame:
    """A CSV's label column as its text where reading it as numbers would rename a class: codes such as ``007`` and
    ``012`` would become 7 and 12 in the served labels and the model card, and no longer join with the user's."""
    if label not in frame.columns or not pd.api.types.is_numeric_dtype(frame[label]):
        return frame
    at = list(frame.columns).index(label)  # by position: the file's own name may have spaces around it
    text = pd.read_csv(path, sep=sep, usecols=[at], dtype=str, keep_default_na=True, encoding=encoding).iloc[:, 0]
    parsed = frame[label].map(str, na_action="ignore")  # 7 -> '7', 1.5 -> '1.5': what a class is shown as
    if (text.str.strip().fillna("") == parsed.fillna("")).all():
        return frame
    return frame.assign(**{label: text.str.strip()})


def decimal_commas(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """A ``;``-separated file's text columns whose every value is a number written with a decimal comma (``39,1``),
    as numbers: such files come from locales that write decimals so, and read as text every measurement would be a
    category (penguins: macro-F1 0.77 against 0.97)."""
    numbers = {}
    for col in frame.select_dtypes(include=["object", "string"]).columns:
        text = frame[col].dropna().astype(str).str.strip()
        if len(text) and text.str.fullmatch(r"[-+]?\d*,\d+|[-+]?\d+").all() and text.str.contains(",").any():
            numbers[col] = pd.to_numeric(frame[col].astype(str).str.strip().str.replace(",", ".", regex=False).where(frame[col].notna()))
    if numbers:
        note(f"{source} writes decimals with a comma in {', '.join(map(repr, numbers))}; read them as numbers.")
    return frame.assign(**numbers)


def csv_separator(path: Path, source: str, key: str, say: bool = True) -> str:
    """The CSV's separator, judged from its header: ``,`` unless the one column it would give holds ``;`` or a tab.

    The header is also where duplicate column names show (pandas would quietly rename ``x1`` to ``x1.1``).
    """
    import csv

    with open_text(path, errors="replace") as fh:
        first = fh.readline()
    sep = ","
    header = next(csv.reader([first]), [])
    if len(header) == 1:
        sep = next((s for s in (";", "\t") if s in header[0]), ",")
        if sep != ",":
            header = next(csv.reader([first], delimiter=sep))
            if say:
                note(f"{source} is {'tab' if sep == chr(9) else repr(sep)}-separated; read it so.")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise StageError(
            f"{key}: {source} has duplicate column names {', '.join(map(repr, dupes))}; give each column its own name."
        )
    return sep


def shown(value: Any) -> str:
    """A value as the user wrote it (``6``, ``'cat'``), never a numpy repr like ``np.int64(6)``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def label_spellings(labels: pd.Series) -> list[list[str]]:
    """Groups of distinct text labels that differ only by case or surrounding spaces (``cat``, ``cat ``, ``Cat``)."""
    text = pd.Series([v for v in labels.dropna().unique() if isinstance(v, str)], dtype=object)
    if text.empty:
        return []
    groups = text.groupby(text.str.strip().str.casefold()).agg(sorted)
    return [g for g in groups if len(g) > 1]


def fold_labels(labels: pd.Series, groups: list[list[str]]) -> pd.Series:
    """Each spelling of a group replaced by the group's most frequent one."""
    counts = labels.value_counts()
    mapping = {v: max(g, key=lambda x: (counts.get(x, 0), x)) for g in groups for v in g}
    return labels.map(lambda v: mapping.get(v, v) if isinstance(v, str) else v).astype(labels.dtype)


def looks_like_id(labels: pd.Series) -> bool:
    """Almost every value distinct: an id or a measurement, not a class (hundreds of real classes still pass)."""
    known = labels.dropna()
    distinct = known.nunique()
    return distinct > MAX_ID_LIKE_CLASSES and distinct > ID_LIKE_SHARE * len(known)


def stratify_key(labels: pd.Series) -> pd.Series | None:
    """Labels usable for a stratified split, or None when no split can stratify.

    Nulls and classes of one row are pooled into one stratum, so the split
    never fails here; judging the labels is validate's job, not ingest's.
    """
    key = labels.astype("string").fillna("<null>")
    counts = key.value_counts()
    key = key.where(~key.isin(counts[counts < 2].index), "<rare>")
    counts = key.value_counts()
    if len(counts) < 2 or counts.min() < 2:
        return None
    return key


def split_frame(
    frame: pd.DataFrame, label: str, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified (when possible) split into (rest, carved) with ``fraction`` carved."""
    from sklearn.model_selection import train_test_split

    n_carved = max(1, int(round(len(frame) * fraction)))
    key = stratify_key(frame[label])
    if key is not None and n_carved < key.nunique():
        key = None  # too few rows to hold every class: plain random split
    if key is not None and len(frame) - n_carved < key.nunique():
        key = None
    rest, carved = train_test_split(frame, test_size=n_carved, random_state=seed, stratify=key)
    return rest.sort_values(ROW_ID), carved.sort_values(ROW_ID)


def read_split(folder: str | Path, split: str) -> pd.DataFrame:
    path = Path(folder) / f"{split}.parquet"
    if not path.exists():
        raise StageError(f"{path} is missing: run the stage that writes it first (dvc repro).")
    return pd.read_parquet(path)


def read_calib(root: str | Path) -> pd.DataFrame:
    """The calibration split as correct left it: the rows the audit trusts (see stages/correct.py)."""
    return read_split(Path(root) / paths.CORRECTED, "calib")


def calibration_rows(root: str | Path, rows: str) -> pd.DataFrame:
    """The calib rows calibrators fit on: ``all`` of them (with a noise-aware fit, the class-conditional noise
    model holds) or the ``trusted`` ones (audit-flagged rows dropped, as early stopping uses)."""
    return read_split(Path(root) / paths.VALIDATED, "calib") if rows == "all" else read_calib(root)


def noisy_rows(issues: pd.DataFrame, encoder: Encoder, splits: tuple[str, ...] = ("train", "calib")) -> tuple[np.ndarray, np.ndarray]:
    """(given labels as class indices, the audit's out-of-sample probabilities) of the audited rows of ``splits``.

    The rows a label-noise matrix is estimated on. By default every train and calib row: the calib split is carved
    out of the same table, so its labels carry the same noise, and on 6-7x the rows confident learning needs far
    less shrinkage towards the identity (digits: 0.20 estimated against 0.21 true, from 0.13 on the calib rows
    alone). Rows of a class the model does not have (dropped as rare) are left out.
    """
    rows = issues[issues["split"].isin(list(splits))]
    lookup = {label_key(v): i for i, v in enumerate(encoder.classes)}
    y = rows["given_label"].map(lambda v: lookup.get(label_key(v), -1)).to_numpy(dtype=np.int64)
    probs = rows[[f"prob_{i}" for i in range(len(encoder.classes))]].to_numpy(np.float64)
    return y[y >= 0], probs[y >= 0]


def noise_splits(inject_noise: Any) -> tuple[str, ...]:
    """Where the calib labels' noise shows: in train and calib alike, but ``data.inject_noise`` flips train labels
    only (the demo), and then the calib rows alone say how noisy the calib labels are."""
    return ("calib",) if inject_noise else ("train", "calib")


def audited_noisy_rows(root: str | Path, encoder: Encoder, inject_noise: Any) -> tuple[np.ndarray, np.ndarray]:
    """``noisy_rows`` of the audit's issues over the splits ``noise_splits`` names: train and calibrate estimate T alike."""
    return noisy_rows(pd.read_parquet(Path(root) / paths.ISSUES), encoder, noise_splits(inject_noise))


def issue_columns(issue: str) -> tuple[str, str]:
    """(flag column, score column) of an audit issue type in ``data/audit/issues.parquet``; lower scores are worse."""
    return ("is_label_issue", "label_quality") if issue == "label" else (f"is_{issue}_issue", f"{issue}_score")


def feature_columns(frame: pd.DataFrame, label: str) -> list[str]:
    return [c for c in frame.columns if c != label and c not in META_COLUMNS]


@dataclass
class Schema:
    """What validate accepted: which columns are numeric, which categorical, which classes."""

    label: str
    numeric: list[str]
    categorical: list[str]
    classes: list[Any]
    date_formats: dict[str, str] = field(default_factory=dict)  # numeric columns read from date text: their format

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    def save_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        return cls(**read_json(path))


def is_categorical_dtype(series: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


@dataclass
class Encoder:
    """Numeric columns standardised (nulls to the train median), categories to codes.

    With ``numeric_transform="quantile"`` numeric columns go through a quantile
    map to a standard normal instead (robust to skew and outliers); the map is
    kept as plain lists so the encoder stays JSON for serving.
    Category code 0 is kept for values unseen in training, so a new category at
    prediction time is no crash. Fitted on training rows only.
    """

    numeric: list[str]
    categorical: list[str]
    classes: list[Any]
    center: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    fill: list[float] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    numeric_transform: str = "standard"
    quantiles: list[list[float]] = field(default_factory=list)
    date_formats: dict[str, str] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame: pd.DataFrame, schema: Schema, numeric_transform: str = "standard") -> Encoder:
        num = frame[schema.numeric].to_numpy(dtype=np.float64) if schema.numeric else np.zeros((len(frame), 0))
        fill = np.nan_to_num(np.nanmedian(num, axis=0)) if len(num) else np.zeros(num.shape[1])
        num = np.where(np.isnan(num), fill, num)
        quantiles: list[list[float]] = []
        if numeric_transform == "quantile" and num.shape[1]:
            from sklearn.preprocessing import QuantileTransformer

            qt = QuantileTransformer(n_quantiles=min(1000, len(num)), random_state=0).fit(num)
            quantiles = qt.quantiles_.T.tolist()
        center = num.mean(axis=0) if len(num) else np.zeros(num.shape[1])
        scale = num.std(axis=0) if len(num) else np.ones(num.shape[1])
        scale = np.where(scale > 1e-12, scale, 1.0)
        categories = {
            c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in schema.categorical
        }
        return cls(
            numeric=list(schema.numeric),
            categorical=list(schema.categorical),
            classes=list(schema.classes),
            center=center.tolist(),
            scale=scale.tolist(),
            fill=fill.tolist(),
            categories=categories,
            numeric_transform=numeric_transform,
            quantiles=quantiles,
            date_formats=dict(schema.date_formats),
        )

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, the unseen-value code 0 included."""
        return [len(self.categories[c]) + 1 for c in self.categorical]

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(numeric float32 [n, n_num], categorical int64 codes [n, n_cat])."""
        missing = [c for c in self.numeric + self.categorical if c not in frame.columns]
        if missing:
            raise StageError(f"input is missing feature column(s) {missing}.")
        if self.numeric:
            block = frame[self.numeric]
            text = [c for c in self.numeric if not pd.api.types.is_numeric_dtype(block[c])]
            if text:  # dates as days, a value that is not a number as missing: as validate reads them
                block = block.assign(**{c: as_numbers(block[c], self.date_formats.get(c)) for c in text})
            num = block.to_numpy(dtype=np.float64, na_value=np.nan)
            num = np.where(np.isnan(num) | infinite(num), np.asarray(self.fill), num)  # +-inf: missing
            if self.numeric_transform == "quantile":
                num = np.column_stack([quantile_normal(num[:, j], q) for j, q in enumerate(self.quantiles)])
            else:
                num = (num - np.asarray(self.center)) / np.asarray(self.scale)
            num = num.astype(np.float32)
        else:
            num = np.zeros((len(frame), 0), dtype=np.float32)
        cat = np.zeros((len(frame), len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            lookup = {v: i + 1 for i, v in enumerate(self.categories[c])}
            cat[:, j] = frame[c].astype(str).map(lookup).fillna(0).to_numpy(dtype=np.int64)
        return num, cat

    def labels(self, series: pd.Series, where: str = "labels") -> np.ndarray:
        """Class indices 0..K-1 in the order of ``classes``."""
        lookup = {label_key(v): i for i, v in enumerate(self.classes)}
        codes = series.map(lambda v: lookup.get(label_key(v), -1)).to_numpy(dtype=np.int64)
        if (codes < 0).any():
            bad = series[codes < 0].iloc[0]
            raise StageError(f"{where}: label {shown(bad)} is not one of the training classes {self.classes}.")
        return codes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Encoder:
        return cls(**d)


def quantile_normal(x: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """scikit-learn's QuantileTransformer(output_distribution="normal") for one column, from its quantiles.

    Interpolating up and down and averaging puts tied values (repeated
    quantiles) in the middle of their interval, as scikit-learn does inside the
    range; unlike scikit-learn, a tie at the minimum or maximum gets the same
    treatment instead of the extreme. The clip keeps the tails finite.
    """
    from scipy.special import ndtri

    q = np.asarray(quantiles)
    ref = np.linspace(0.0, 1.0, len(q))
    u = 0.5 * (np.interp(x, q, ref) - np.interp(-x, -q[::-1], -ref[::-1]))
    eps = 1e-7 - np.spacing(1)
    return ndtri(np.clip(u, eps, 1.0 - eps))


def label_key(value: Any) -> str:
    """Label identity across int/str/numpy types (3, '3' and np.int64(3) are one class)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value)
