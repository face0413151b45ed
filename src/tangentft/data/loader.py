"""Load a task from a folder of split files, a single file, or a Hugging Face ``datasets`` id.

Every problem with the input becomes a one-line :class:`~tangentft.errors.TangentError` that names the
file, the line and the offending value, so the CLI can print it and exit with code 2.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TangentError
from .hub import offline_unless_reachable
from .tasks import get_builtin_spec, spec_with_overrides, validate_label_words
from .types import Example, TaskData, TaskSpec

SPLIT_NAMES = ("train", "dev", "validation", "test")
FILE_EXTENSIONS = (".tsv", ".csv", ".jsonl", ".parquet")
FIELDS = ("label", "score", "sentence", "sentence1", "sentence2")

DEFAULT_TEMPLATES = {
    ("classification", False): "Input: {sentence}\nLabel:",
    ("classification", True): "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nLabel:",
    ("regression", False): "Input: {sentence}\nScore:",
    ("regression", True): "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nScore:",
}

HF_PREFIX = "hf:"  # hf:NAME[:CONFIG] always means the Hugging Face hub, even if a folder has that name
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # what datasets' save_to_disk writes

# Short names for the GLUE configs most people type; anything else goes to load_dataset as written.
_HF_ALIASES = {"glue": "nyu-mll/glue", "super_glue": "aps/super_glue"}


def _short(value: object, limit: int = 60) -> str:
    """repr() of a value, cut to keep the error on one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


@dataclass
class _Expect:
    """The column layout a file must have: set by a built-in spec or by the first split read."""

    target: str  # "label" or "score"
    pair: bool
    why: str


@dataclass
class _RawSplit:
    """Parsed rows of one split before the spec (and hence the label set) is known."""

    split: str
    where: str  # file path (or HF dataset/split) for error messages
    uid_prefix: str
    target: str
    pair: bool
    lines: list[int] = field(default_factory=list)
    targets: list[int | float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    pairs: list[str] = field(default_factory=list)


def _parse_target(value: object, target: str, where: str, line: int) -> int | float:
    """An integer class index (``label``) or a finite float (``score``) from a cell or JSON value."""
    if target == "label":
        if isinstance(value, bool):
            raise TangentError(f"{where}:{line}: label {_short(value)} is not an integer class index")
        if isinstance(value, int):
            label = value
        elif isinstance(value, float) and value.is_integer():
            label = int(value)
        elif isinstance(value, str):
            try:
                label = int(value.strip())
            except ValueError:
                raise TangentError(
                    f"{where}:{line}: label {_short(value)} is not an integer class index (0, 1, ...)"
                ) from None
        else:
            raise TangentError(
                f"{where}:{line}: label {_short(value)} is not an integer class index (0, 1, ...)"
            )
        if label < 0:
            raise TangentError(
                f"{where}:{line}: label {_short(value)} is negative; labels are class indices 0, 1, ..."
            )
        return label
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TangentError(f"{where}:{line}: score {_short(value)} is not a number")
    try:
        score = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise TangentError(f"{where}:{line}: score {_short(value)} is not a number") from None
    if not math.isfinite(score):
        raise TangentError(f"{where}:{line}: score {_short(value)} is not a finite number")
    return score


def _resolve_columns(
    found: list[str], columns: Mapping[str, str], expect: _Expect | None, where: str, line: int
) -> tuple[str, bool, dict[str, str]]:
    """Map the canonical fields onto the columns present: (target field, is_pair, field -> column name)."""
    by_lower: dict[str, str] = {}
    for name in found:
        by_lower.setdefault(name.strip().lower(), name)
    listing = ", ".join(repr(n) for n in found) or "none"
    mapping: dict[str, str] = {}
    remapped = {v.strip().lower() for v in columns.values()}
    for canon in FIELDS:
        if canon in columns:
            actual = by_lower.get(columns[canon].strip().lower())
            if actual is None:
                raise TangentError(
                    f"{where}:{line}: missing column {columns[canon]!r} (mapped to '{canon}'); "
                    f"columns found: {listing}"
                )
            mapping[canon] = actual
        elif canon in by_lower and canon not in remapped:
            mapping[canon] = by_lower[canon]

    for actual in mapping.values():
        copies = [i + 1 for i, name in enumerate(found) if name.strip().lower() == actual.strip().lower()]
        if len(copies) > 1:
            raise TangentError(f"{where}:{line}: column {actual!r} appears {len(copies)} times in the header (columns "
                               f"{', '.join(map(str, copies))}); keep one, or rename the others")
    taken = {columns[c].strip().lower(): c for c in columns}

    def missing(name: str, why: str) -> TangentError:
        if name in by_lower and name in taken:  # the column is there, but the user's mapping gave it to another field
            return TangentError(f"{where}:{line}: column {by_lower[name]!r} is mapped to '{taken[name]}', so the task "
                                f"has no '{name}' column; map '{name}' to a column too; columns found: {listing}")
        return TangentError(f"{where}:{line}: missing column '{name}'{why}; columns found: {listing}")

    if expect is not None:
        target, pair = expect.target, expect.pair
        needed = [target] + (["sentence1", "sentence2"] if pair else ["sentence"])
        for name in needed:
            if name not in mapping:
                raise missing(name, f" ({expect.why})")
        return target, pair, mapping

    if "label" in mapping:
        target = "label"
    elif "score" in mapping:
        target = "score"
    else:
        raise missing("label", " (or 'score' for a regression task)")
    if "sentence" in mapping:
        return target, False, mapping
    if "sentence1" in mapping or "sentence2" in mapping:
        for name in ("sentence1", "sentence2"):
            if name not in mapping:
                raise missing(name, " (a sentence-pair task needs sentence1 and sentence2)")
        return target, True, mapping
    raise missing("sentence", " (or 'sentence1' and 'sentence2')")


def _read_text(path: Path) -> str:
    """The file's text, decoded strictly as UTF-8 (a leading BOM is dropped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TangentError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start + skip
        line = data.count(b"\n", 0, start) + 1
        bad = data[start : exc.end + skip]
        raise TangentError(
            f"{path}:{line}: bytes {bad!r} are not valid UTF-8 (byte offset {start}); save the file as UTF-8"
        ) from None


def _delimited_records(text: str, delimiter: str, where: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) for every non-blank record."""
    if delimiter == "\t":
        # TSV has no quoting (STS-B sentences contain bare '"'), so one line is one record.
        for lineno, raw in enumerate(text.split("\n"), 1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if line.strip():
                yield lineno, line.split("\t")
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    last = 0
    try:
        for fields in reader:
            start, last = last + 1, reader.line_num
            if fields and any(f.strip() for f in fields):
                yield start, fields
    except csv.Error as exc:
        raise TangentError(f"{where}:{reader.line_num}: malformed CSV ({exc})") from None


def _read_delimited(
    path: Path, split: str, delimiter: str, columns: Mapping[str, str], expect: _Expect | None
) -> _RawSplit:
    where = str(path)
    records = _delimited_records(_read_text(path), delimiter, where)
    header = next(records, None)
    if header is None:
        example = "label<TAB>sentence" if delimiter == "\t" else "label,sentence"
        raise TangentError(f"{where}:1: file is empty (expected a header row such as '{example}')")
    header_line, names = header
    target, pair, mapping = _resolve_columns(names, columns, expect, where, header_line)
    index = {canon: names.index(actual) for canon, actual in mapping.items()}
    t_i = index[target]
    s_i = index["sentence1" if pair else "sentence"]
    p_i = index["sentence2"] if pair else -1
    width = len(names)
    raw = _RawSplit(split, where, path.name, target, pair)
    lines, targets, texts, pairs = raw.lines, raw.targets, raw.texts, raw.pairs
    for lineno, cells in records:
        if len(cells) != width:
            raise TangentError(
                f"{where}:{lineno}: found {len(cells)} column(s) but the header (line {header_line}) "
                f"has {width}: {_short(delimiter.join(cells))}"
            )
        lines.append(lineno)
        targets.append(_parse_target(cells[t_i], target, where, lineno))
        texts.append(cells[s_i])
        if pair:
            pairs.append(cells[p_i])
    if not lines:
        raise TangentError(
            f"{where}:{header_line}: no data rows after the header {_short(delimiter.join(names))}"
        )
    return raw


def _dict_rows(
    rows: Iterable[tuple[int, object]],
    split: str,
    where: str,
    uid_prefix: str,
    columns: Mapping[str, str],
    expect: _Expect | None,
) -> _RawSplit | None:
    """Parse JSON-like row objects (JSONL lines or HF dataset rows); None when there are none."""
    raw: _RawSplit | None = None
    mapping: dict[str, str] = {}
    for lineno, obj in rows:
        if not isinstance(obj, dict):
            raise TangentError(
                f"{where}:{lineno}: expected a JSON object, got {type(obj).__name__} {_short(obj)}"
            )
        if raw is None:
            target, pair, mapping = _resolve_columns(list(obj), columns, expect, where, lineno)
            raw = _RawSplit(split, where, uid_prefix, target, pair)
        for canon in [raw.target] + (["sentence1", "sentence2"] if raw.pair else ["sentence"]):
            if mapping[canon] not in obj:
                keys = ", ".join(repr(k) for k in obj) or "none"
                raise TangentError(f"{where}:{lineno}: missing column {mapping[canon]!r}; keys found: {keys}")
        text_keys = ["sentence1", "sentence2"] if raw.pair else ["sentence"]
        for canon in text_keys:
            if not isinstance(obj[mapping[canon]], str):
                raise TangentError(
                    f"{where}:{lineno}: column {mapping[canon]!r} should be text, "
                    f"got {_short(obj[mapping[canon]])}"
                )
        raw.lines.append(lineno)
        raw.targets.append(_parse_target(obj[mapping[raw.target]], raw.target, where, lineno))
        raw.texts.append(obj[mapping[text_keys[0]]])
        if raw.pair:
            raw.pairs.append(obj[mapping["sentence2"]])
    return raw


def _read_jsonl(path: Path, split: str, columns: Mapping[str, str], expect: _Expect | None) -> _RawSplit:
    where = str(path)

    def objects() -> Iterator[tuple[int, object]]:
        for lineno, line in enumerate(_read_text(path).split("\n"), 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise TangentError(
                    f"{where}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from None

    raw = _dict_rows(objects(), split, where, path.name, columns, expect)
    if raw is None:
        raise TangentError(f"{where}:1: file is empty (expected one JSON object per line)")
    return raw


def _read_file(path: Path, split: str, columns: Mapping[str, str], expect: _Expect | None) -> _RawSplit:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return _read_delimited(path, split, "\t", columns, expect)
    if suffix == ".csv":
        return _read_delimited(path, split, ",", columns, expect)
    if suffix == ".jsonl":
        return _read_jsonl(path, split, columns, expect)
    if suffix == ".parquet":
        return _read_parquet(path, split, columns, expect)
    raise TangentError(f"{path}: unsupported file type '{path.suffix}' (use .tsv, .csv, .jsonl or .parquet)")


def _read_parquet(path: Path, split: str, columns: Mapping[str, str], expect: _Expect | None) -> _RawSplit:
    """Rows of a parquet file (pyarrow); errors name ``file:row`` with 1-based rows."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TangentError(f"{path}: reading parquet needs pyarrow (`pip install 'tangentft[datasets]'`)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses for unreadable files
        first = (str(exc).strip().splitlines() or [""])[0]
        raise TangentError(f"{path}: not a readable parquet file ({first})") from None
    raw = _dict_rows(enumerate(table.to_pylist(), 1), split, str(path), path.name, columns, expect)
    if raw is None:
        raise TangentError(f"{path}: the parquet file has no rows")
    return raw


def _split_files(folder: Path) -> dict[str, Path]:
    """split name -> file for the split files present in a task folder (``validation`` is read as ``dev``)."""
    found: dict[str, Path] = {}
    for split in SPLIT_NAMES:
        present = [
            folder / f"{split}{ext}" for ext in FILE_EXTENSIONS if (folder / f"{split}{ext}").is_file()
        ]
        if len(present) > 1:
            raise TangentError(f"{folder}: both {present[0].name} and {present[1].name} exist; keep only one")
        if not present:
            continue
        key = "dev" if split == "validation" else split
        if key in found:
            raise TangentError(
                f"{folder}: both {found[key].name} and {present[0].name} exist; keep only one dev split"
            )
        found[key] = present[0]
    if not found:
        # a split name that is there but is no readable file: say what it is instead of listing it as "found"
        for split in SPLIT_NAMES:
            for ext in FILE_EXTENSIONS:
                path = folder / f"{split}{ext}"
                if path.is_symlink() and not path.exists():
                    raise TangentError(f"{path}: a symbolic link that leads nowhere (broken, or a loop); point it "
                                       "at the split file")
                if path.is_dir():
                    raise TangentError(f"{path} is a folder, not a split file; the split file goes in its place")
        entries = sorted(p.name for p in folder.iterdir())
        listing = ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "") if entries else "nothing"
        raise TangentError(
            f"{folder}: no split file (train/dev/validation/test with .tsv, .csv or .jsonl); found: {listing}"
        )
    return found


def _check_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    if not columns:
        return {}
    out: dict[str, str] = {}
    for canon, actual in columns.items():
        if canon not in FIELDS:
            raise TangentError(f"columns: unknown field {canon!r} (expected one of: {', '.join(FIELDS)})")
        if not isinstance(actual, str) or not actual.strip():
            raise TangentError(f"columns: column name for '{canon}' is {actual!r}; give a non-empty name")
        out[canon] = actual
    return out


def _expect_from_spec(spec: TaskSpec | None) -> _Expect | None:
    if spec is None:
        return None
    target = "label" if spec.kind == "classification" else "score"
    return _Expect(
        target,
        spec.is_pair,
        f"task '{spec.name}' is {spec.kind}{' on sentence pairs' if spec.is_pair else ''}",
    )


def _read_splits(
    files: dict[str, Path], columns: Mapping[str, str], builtin: TaskSpec | None
) -> list[_RawSplit]:
    expect = _expect_from_spec(builtin)
    raws: list[_RawSplit] = []
    for split, path in files.items():
        raw = _read_file(path, split, columns, expect)
        if expect is None:
            expect = _Expect(raw.target, raw.pair, f"as in {path.name}")
        raws.append(raw)
    return raws


def _score_verbalizer(scores: list[float]) -> tuple[list[str], list[float]]:
    """Score words for a causal LM on a user regression task: the integers spanning the observed scores
    when there are at most 11 of them, otherwise 11 evenly spaced values."""
    lo, hi = min(scores), max(scores)
    first, last = math.floor(lo), math.ceil(hi)
    if last == first:
        last = first + 1
    if last - first + 1 <= 11:
        values = [float(v) for v in range(first, last + 1)]
        return [f" {int(v)}" for v in values], values
    step = (hi - lo) / 10
    values = [float(f"{lo + i * step:.4g}") for i in range(11)]
    return [f" {v:g}" for v in values], values


def _build_spec(
    name: str,
    raws: list[_RawSplit],
    builtin: TaskSpec | None,
    template: str | None,
    label_words: list[str] | None,
    num_labels: int | None = None,
) -> TaskSpec:
    if builtin is not None:
        return spec_with_overrides(builtin, template=template, label_words=label_words)
    kind = "classification" if raws[0].target == "label" else "regression"
    pair = raws[0].pair
    if kind == "classification":
        if label_words is not None:
            words = validate_label_words(label_words, count=num_labels, task=name)
            if len(words) < 2:
                raise TangentError(
                    f"task '{name}': {len(words)} label word(s) {words!r} given; "
                    "a classification task needs at least 2"
                )
            top = int(max(max(r.targets) for r in raws)) + 1
            if num_labels is None and len(words) > top:
                import warnings

                warnings.warn(
                    f"task '{name}': {len(words)} label words {words!r} given but the labels only reach {top - 1}: "
                    f"class {top}{f'..{len(words) - 1}' if len(words) - 1 > top else ''} gets an output and no "
                    "example; give one word per class, or "
                    f"num_labels={len(words)} to say the files lack a class", stacklevel=4)
        elif num_labels is not None:
            words = [f" {i}" for i in range(num_labels)]
        else:
            _check_no_gap(raws)
            top = max(max(r.targets) for r in raws)
            words = [f" {i}" for i in range(max(2, int(top) + 1))]
        spec = TaskSpec(name, kind, DEFAULT_TEMPLATES[(kind, pair)], words, num_classes=len(words))
        return spec_with_overrides(spec, template=template)
    words, values = _score_verbalizer([float(t) for r in raws for t in r.targets])
    spec = TaskSpec(name, kind, DEFAULT_TEMPLATES[(kind, pair)], words, label_values=values, num_classes=1)
    return spec_with_overrides(spec, template=template, label_words=label_words)


def _check_no_gap(raws: list[_RawSplit]) -> None:
    """Without label words or num_labels the classes are 0..C-1 with C = the largest label + 1; a label
    far above the others (a lone 7 in a 0/1 file) is far more often a typo than a class of its own."""
    seen = {int(t) for r in raws for t in r.targets}
    if len(seen) < 2:
        return  # _check_labels says a task needs two classes
    declared = next(c for c in range(len(seen) + 1) if c not in seen)  # 0..declared-1 all occur
    for raw in raws:
        for line, label in zip(raw.lines, raw.targets, strict=True):
            if label > declared:
                hint = f"set num_labels={int(label) + 1} if the task really has {int(label) + 1} classes"
                if declared >= 2:
                    raise TangentError(
                        f"{raw.where}:{line}: label {label} is outside the classes 0..{declared - 1} the other "
                        f"labels declare (no example has label {declared}); {hint}"
                    )
                raise TangentError(
                    f"{raw.where}:{line}: label {label} leaves class {declared} without any example "
                    f"(labels are class indices 0..C-1); {hint}"
                )


def _check_range(spec: TaskSpec, raws: list[_RawSplit], builtin: TaskSpec | None,
                 score_range: tuple[float, float] | None) -> None:
    """Regression scores must lie in the declared range: ``score_range`` when given, else the built-in
    task's (STS-B: 0–5); a generic regression task without ``score_range`` accepts any finite score."""
    explicit = score_range is not None
    if not explicit and builtin is not None and builtin.label_values:
        score_range = (min(builtin.label_values), max(builtin.label_values))
    if score_range is None:
        return
    lo, hi = score_range
    for raw in raws:
        for line, score in zip(raw.lines, raw.targets, strict=True):
            if not lo <= score <= hi:
                if explicit:
                    raise TangentError(f"{raw.where}:{line}: score {score:g} is outside score_range {lo:g}–{hi:g}")
                raise TangentError(
                    f"{raw.where}:{line}: score {score:g} is outside the range {lo:g}–{hi:g} of task '{spec.name}'; "
                    f"set score_range to accept it (e.g. {min(lo, score):g},{max(hi, score):g})"
                )


def _check_options(name: str, kind: str, builtin: TaskSpec | None, num_labels: int | None,
                   score_range: tuple[float, float] | None) -> tuple[float, float] | None:
    if num_labels is not None:
        if kind != "classification":
            raise TangentError(f"task '{name}': num_labels applies to classification tasks; this one is {kind}")
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise TangentError(f"task '{name}': num_labels must be an integer ≥ 2, got {num_labels!r}")
        if builtin is not None and num_labels != builtin.num_classes:
            raise TangentError(
                f"task '{name}' is built in with {builtin.num_classes} classes ({', '.join(map(repr, builtin.label_words))}); "
                f"num_labels {num_labels} does not match"
            )
    if score_range is None:
        return None
    if kind != "regression":
        raise TangentError(f"task '{name}': score_range applies to regression tasks; this one is {kind}")
    try:
        lo, hi = (float(v) for v in score_range)
    except (TypeError, ValueError):
        raise TangentError(f"task '{name}': score_range must be two numbers low,high, got {score_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise TangentError(f"task '{name}': score_range must be two finite numbers low < high, got {lo:g},{hi:g}")
    return lo, hi


def _check_labels(spec: TaskSpec, raws: list[_RawSplit]) -> None:
    if spec.kind != "classification":
        return
    limit = spec.num_classes
    words = ", ".join(repr(w) for w in spec.label_words)
    for raw in raws:
        for line, label in zip(raw.lines, raw.targets, strict=True):
            if label >= limit:
                raise TangentError(
                    f"{raw.where}:{line}: label {label} is outside the label set 0..{limit - 1} "
                    f"({limit} label words: {words})"
                )
    distinct = {t for raw in raws for t in raw.targets}
    if len(distinct) < 2:
        only = next(iter(distinct))
        where = "; ".join(f"{r.where}:{r.lines[0]}-{r.lines[-1]}" for r in raws)
        raise TangentError(
            f"{where}: every label is {only}; a classification task needs at least two classes"
        )


def _check_texts(raws: list[_RawSplit]) -> None:
    """A split whose every sentence is blank has nothing for a model to read: refuse it, naming the file."""
    for raw in raws:
        columns = [raw.texts] + ([raw.pairs] if raw.pair else [])
        if all(not t.strip() for texts in columns for t in texts):
            which = "sentence1 and sentence2" if raw.pair else "sentence"
            raise TangentError(f"{raw.where}: every {which} is empty ({len(raw.texts)} rows); the task has no text to learn from")


def _check_train_classes(spec: TaskSpec, raws: list[_RawSplit]) -> None:
    """Warn when a class has examples in an evaluation split but none in train: the model gets an output for it
    and no example to learn it from, so every such evaluation example is an error it could not avoid."""
    import warnings

    train = next((r for r in raws if r.split == "train"), None)
    if spec.kind != "classification" or train is None:
        return
    seen = {int(t) for t in train.targets}
    for raw in raws:
        missing = sorted({int(t) for t in raw.targets} - seen)
        if raw is not train and missing:
            names = ", ".join(f"{c} ({spec.label_words[c].strip()!r})" for c in missing)
            warnings.warn(f"{raw.where}: class {names} has examples here but none in {train.where}; the model gets no "
                          "training example for it", stacklevel=4)


def _to_task(
    name: str,
    raws: list[_RawSplit],
    builtin: TaskSpec | None,
    source: str,
    template: str | None,
    label_words: list[str] | None,
    num_labels: int | None = None,
    score_range: tuple[float, float] | None = None,
) -> TaskData:
    kind = "classification" if raws[0].target == "label" else "regression"
    score_range = _check_options(name, kind, builtin, num_labels, score_range)
    spec = _build_spec(name, raws, builtin, template, label_words, num_labels)
    _check_labels(spec, raws)
    _check_range(spec, raws, builtin, score_range)
    _check_texts(raws)
    _check_train_classes(spec, raws)
    splits: dict[str, list[Example]] = {}
    for raw in raws:
        prefix = raw.uid_prefix
        if raw.pair:
            splits[raw.split] = [
                Example(text, target, pair_text, f"{prefix}:{line}")
                for line, target, text, pair_text in zip(
                    raw.lines, raw.targets, raw.texts, raw.pairs, strict=True
                )
            ]
        else:
            splits[raw.split] = [
                Example(text, target, None, f"{prefix}:{line}")
                for line, target, text in zip(raw.lines, raw.targets, raw.texts, strict=True)
            ]
    return TaskData(spec=spec, splits=splits, source=source)


def _looks_like_path(text: str) -> bool:
    p = Path(text)
    return (
        p.is_absolute()
        or text.startswith((".", "~"))
        or p.suffix.lower() in FILE_EXTENSIONS
        or text.count("/") > 1
        or "\\" in text
    )


def _load_hf(
    dataset_id: str,
    columns: Mapping[str, str],
    task_name: str | None,
    template: str | None,
    label_words: list[str] | None,
    declared: Mapping[str, object] | None = None,
) -> TaskData:
    try:
        import datasets  # optional: only for Hugging Face dataset ids
    except ImportError:
        raise TangentError(
            f"{dataset_id}: no such local file or folder; loading it as a Hugging Face dataset "
            "needs `pip install datasets` and network access"
        ) from None
    repo, _, config = dataset_id.partition(":")
    if not config and repo.count("/") == 1 and repo.split("/")[0] in _HF_ALIASES:
        alias, config = repo.split("/")
        repo = _HF_ALIASES[alias]
    name = task_name or config or repo.rsplit("/", 1)[-1]
    try:
        with offline_unless_reachable():
            loaded = datasets.load_dataset(repo, config or None)
    except Exception as exc:  # network, auth and missing-config errors all arrive here
        first = (str(exc).strip().splitlines() or [""])[0]
        if _unreachable(exc):
            raise TangentError(
                f"hf:{dataset_id}: the Hugging Face hub is not reachable ({first}); download the dataset where "
                "the hub is reachable and pass the folder saved with save_to_disk, or a parquet file"
            ) from None
        raise TangentError(
            f"{dataset_id}: could not load Hugging Face dataset ({type(exc).__name__}: {first})"
        ) from None
    return _from_datasets(loaded, dataset_id, f"hf:{dataset_id}", name, columns, template, label_words, declared)


def _unreachable(exc: BaseException) -> bool:
    """True for the errors of an offline machine or an unreachable hub (as opposed to a wrong name)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("offline", "connection", "timeout", "timed out", "unreachable",
                                   "name resolution", "max retries"))


def _load_saved(folder: Path, columns: Mapping[str, str], task_name: str | None, template: str | None,
                label_words: list[str] | None, declared: Mapping[str, object] | None = None) -> TaskData:
    """A ``datasets`` ``save_to_disk`` folder (a ``DatasetDict``, or one ``Dataset`` read as the train split)."""
    try:
        import datasets
    except ImportError:
        raise TangentError(f"{folder}: a saved datasets folder needs `pip install 'tangentft[datasets]'`") from None
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # a torn or foreign folder: FileNotFoundError, json errors, arrow errors
        first = (str(exc).strip().splitlines() or [""])[0]
        raise TangentError(f"{folder}: not a readable datasets save_to_disk folder ({first})") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    name = task_name or folder.resolve().name
    return _from_datasets(loaded, str(folder), str(folder), name, columns, template, label_words, declared)


def _from_datasets(loaded, dataset_id: str, source: str, name: str, columns: Mapping[str, str], template: str | None,
                   label_words: list[str] | None, declared: Mapping[str, object] | None = None) -> TaskData:
    """Splits of a loaded ``datasets`` dict as a task; errors name ``dataset_id[split]:row`` (0-based rows)."""
    builtin = get_builtin_spec(name)
    expect = _expect_from_spec(builtin)
    cols = dict(columns)
    raws: list[_RawSplit] = []
    for split_name in loaded:
        ds = loaded[split_name]
        split = "dev" if split_name == "validation" else split_name
        names = list(getattr(ds, "column_names", []) or [])
        feature = (getattr(ds, "features", None) or {}).get("label")
        dtype = str(getattr(feature, "dtype", ""))
        # GLUE's STS-B stores the similarity score in a float column called "label".
        if "score" not in cols and "score" not in names and dtype.startswith("float"):
            cols["score"] = "label"
        rows = list(ds)
        label_col = cols.get("label", "label")
        # GLUE test splits are unlabelled (label -1); they are useless for training or evaluation.
        if rows and cols.get("score") != "label" and all(r.get(label_col) == -1 for r in rows):
            continue
        raw = _dict_rows(enumerate(rows), split, f"{dataset_id}[{split_name}]", split, cols, expect)
        if raw is None:
            continue
        if expect is None:
            expect = _Expect(raw.target, raw.pair, f"as in split {split_name}")
        raws.append(raw)
    if not raws:
        raise TangentError(f"{dataset_id}: the Hugging Face dataset has no labelled split")
    return _to_task(name, raws, builtin, source, template, label_words, **(declared or {}))


def load_task(
    path_or_id: str | Path,
    *,
    template: str | None = None,
    label_words: list[str] | None = None,
    task_name: str | None = None,
    columns: Mapping[str, str] | None = None,
    num_labels: int | None = None,
    score_range: tuple[float, float] | None = None,
) -> TaskData:
    """Load a task's splits and spec.

    ``path_or_id`` is one of:

    * a folder holding any of ``{train,dev,validation,test}.{tsv,csv,jsonl}`` (``validation`` becomes
      the ``dev`` split);
    * a single ``.tsv``/``.csv``/``.jsonl``/``.parquet`` file, loaded as the ``train`` split;
    * a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict``: its splits; a ``Dataset``: train);
    * ``hf:NAME[:CONFIG]`` (or a bare id such as ``glue/sst2``): a Hugging Face hub dataset (needs the
      optional ``datasets`` package and a reachable hub; unlabelled splits are skipped).

    Columns (header row for TSV/CSV, keys for JSONL): ``label`` + ``sentence`` is classification,
    ``score`` + ``sentence`` regression, and ``sentence1`` + ``sentence2`` instead of ``sentence`` a
    sentence-pair task. ``columns`` renames them, e.g. ``{"sentence": "text", "label": "y"}``. Labels are
    class indices 0..C-1; scores are finite numbers. Each example's uid is ``"<file name>:<line>"``
    (1-based file lines; a TSV/CSV header is line 1) or ``"<split>:<row>"`` for HF datasets.

    The spec is the built-in one when ``task_name`` (default: the folder name, or the file's stem) names
    a built-in task (sst2, mr, cr, cola, stsb). Otherwise a generic spec is made: template
    ``"Input: {sentence}\\nLabel:"`` (``"...\\nScore:"`` for regression; ``"Sentence 1: {sentence1}\\n
    Sentence 2: {sentence2}\\nLabel:"`` for pairs), label words ``" 0"``, ``" 1"``, ... with C = the largest
    label + 1 (at least 2) or the number of ``label_words`` given, and for regression score words over
    the integers spanning the observed scores. ``template`` and ``label_words`` override either spec.

    Labels and scores must lie in the task's declared classes/range: a built-in spec's classes (and
    STS-B's 0–5), ``label_words``, or ``num_labels`` / ``score_range`` when given. Without any of these a
    classification file declares its classes by its labels, and a label beyond a class no example has
    (a lone 7 in a 0/1 file) is refused as a likely typo.

    Raises TangentError (one line naming file, line and value) on any bad input.
    """
    cols = _check_columns(columns)
    declared = {"num_labels": num_labels, "score_range": score_range}
    text = str(path_or_id)
    if not text.strip():
        raise TangentError(
            f"{text!r}: no such file or folder (give a task folder, a data file or a dataset id)"
        )
    if text.startswith(HF_PREFIX):
        return _load_hf(text[len(HF_PREFIX):], cols, task_name, template, label_words, declared)
    path = Path(text).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in SAVED_DATASET_FILES):
        return _load_saved(path, cols, task_name, template, label_words, declared)
    if path.is_dir():
        name = task_name or path.resolve().name
        files = _split_files(path)
    elif path.is_file():
        if path.suffix.lower() not in FILE_EXTENSIONS:
            raise TangentError(f"{path}: unsupported file type '{path.suffix}' (use .tsv, .csv, .jsonl or .parquet)")
        name = task_name or path.stem
        files = {"train": path}
    elif isinstance(path_or_id, Path) or _looks_like_path(text):
        raise TangentError(f"{text}: no such file or folder")
    else:
        return _load_hf(text, cols, task_name, template, label_words, declared)
    builtin = get_builtin_spec(name)
    raws = _read_splits(files, cols, builtin)
    return _to_task(name, raws, builtin, str(path), template, label_words, num_labels, score_range)


__all__ = ["load_task", "DEFAULT_TEMPLATES", "SPLIT_NAMES", "FILE_EXTENSIONS"]
