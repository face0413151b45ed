"""Built-in task specs (prompt template + verbalizer words) and validated user overrides.

The built-ins follow the prompt-based fine-tuning setups of the papers tangentft implements: a short
template ending in a cue, and one single-token label word per class. STS-B is posed to a causal LM as
the softmax-weighted expectation of the score words " 0" … " 5" (one output, K = 1); an encoder uses a
1-output linear head instead and ignores the words.
"""

from __future__ import annotations

import dataclasses
import string

from ..errors import TangentError
from .types import TaskSpec

_SENTIMENT_WORDS = [" negative", " positive"]

BUILTIN_TASKS: list[TaskSpec] = [
    TaskSpec(
        "sst2", "classification", "Review: {sentence}\nSentiment:", list(_SENTIMENT_WORDS), num_classes=2
    ),
    TaskSpec("mr", "classification", "Review: {sentence}\nSentiment:", list(_SENTIMENT_WORDS), num_classes=2),
    TaskSpec(
        "cr",
        "classification",
        "Product review: {sentence}\nSentiment:",
        list(_SENTIMENT_WORDS),
        num_classes=2,
    ),
    TaskSpec(
        "cola",
        "classification",
        "Sentence: {sentence}\nGrammatically acceptable:",
        [" no", " yes"],
        num_classes=2,
    ),
    TaskSpec(
        "stsb",
        "regression",
        "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nSimilarity from 0 to 5:",
        [" 0", " 1", " 2", " 3", " 4", " 5"],
        label_values=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        num_classes=1,
    ),
]

_BY_NAME = {spec.name: spec for spec in BUILTIN_TASKS}


def get_builtin_spec(name: str) -> TaskSpec | None:
    """A fresh copy of the built-in spec called ``name`` (case-insensitive), or None if there is none."""
    spec = _BY_NAME.get(name.strip().lower())
    if spec is None:
        return None
    # Copies, so a caller mutating its spec cannot change the registry for everyone else.
    return dataclasses.replace(spec, label_words=list(spec.label_words), label_values=list(spec.label_values))


def validate_template(template: str, *, pair: bool, task: str = "") -> None:
    """Raise TangentError unless ``template`` has exactly the placeholders a (pair) task needs."""
    where = f"task '{task}': " if task else ""
    if not isinstance(template, str) or not template.strip():
        raise TangentError(f"{where}template {template!r} is empty")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced braces
        raise TangentError(
            f"{where}template {template!r} is not a valid format string ({exc}); "
            "write a literal brace as '{{' or '}}'"
        ) from None
    allowed = {"sentence1", "sentence2"} if pair else {"sentence"}
    found: set[str] = set()
    for _, field_name, format_spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in {"sentence", "sentence1", "sentence2"}:
            raise TangentError(
                f"{where}template {template!r} has unknown placeholder {{{field_name}}}; "
                f"allowed: {', '.join('{' + a + '}' for a in sorted(allowed))}"
            )
        # TaskSpec.is_pair looks for the literal text "{sentence2}", so placeholders must be plain.
        if format_spec or conversion:
            raise TangentError(
                f"{where}template {template!r}: write the placeholder as plain {{{field_name}}} "
                "without a conversion or format spec"
            )
        found.add(field_name)
    if pair:
        if "sentence" in found:
            raise TangentError(
                f"{where}template {template!r} uses {{sentence}} but the task has sentence pairs; "
                "use {sentence1} and {sentence2}"
            )
        missing = sorted(allowed - found)
        if missing:
            raise TangentError(
                f"{where}template {template!r} lacks {' and '.join('{' + m + '}' for m in missing)}"
                " (a sentence-pair task needs both {sentence1} and {sentence2})"
            )
    else:
        if found & {"sentence1", "sentence2"}:
            raise TangentError(
                f"{where}template {template!r} uses {{sentence1}}/{{sentence2}} but the task has "
                "one sentence per example; use {sentence}"
            )
        if "sentence" not in found:
            raise TangentError(f"{where}template {template!r} lacks {{sentence}}")


def _parse_number(word: str) -> float | None:
    try:
        value = float(word)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def validate_label_words(words: list[str], *, count: int | None, task: str = "") -> list[str]:
    """Check verbalizer words: strings, non-blank, distinct, and ``count`` of them when given."""
    where = f"task '{task}': " if task else ""
    if isinstance(words, str):
        raise TangentError(f"{where}label words must be a list of words, got the single string {words!r}")
    words = list(words)
    for i, word in enumerate(words):
        if not isinstance(word, str) or not word.strip():
            raise TangentError(f"{where}label word {i} is {word!r}; every label word must be non-blank text")
    seen: dict[str, int] = {}
    for i, word in enumerate(words):
        if word in seen:
            raise TangentError(f"{where}label word {word!r} is given twice (positions {seen[word]} and {i})")
        seen[word] = i
    if count is not None and len(words) != count:
        raise TangentError(
            f"{where}{len(words)} label words {words!r} given but the task has {count} classes"
        )
    return words


def spec_with_overrides(
    spec: TaskSpec, template: str | None = None, label_words: list[str] | None = None
) -> TaskSpec:
    """A copy of ``spec`` with a new template and/or label words, validated against the task.

    Classification: exactly ``num_classes`` words. Regression: if every word reads as a number
    (" 1", " 2.5") those numbers become ``label_values``; otherwise the word count must equal the
    existing ``label_values`` count and the values are kept.
    """
    new_template = spec.template if template is None else template
    validate_template(new_template, pair=spec.is_pair, task=spec.name)
    new_words = list(spec.label_words)
    new_values = list(spec.label_values)
    if label_words is not None:
        if spec.kind == "classification":
            new_words = validate_label_words(label_words, count=spec.num_classes, task=spec.name)
        else:
            new_words = validate_label_words(label_words, count=None, task=spec.name)
            numbers = [_parse_number(w) for w in new_words]
            if all(n is not None for n in numbers):
                new_values = [float(n) for n in numbers]  # type: ignore[arg-type]
            elif len(new_words) != len(spec.label_values):
                raise TangentError(
                    f"task '{spec.name}': label words {new_words!r} are not numbers, so they need one word "
                    f"per score value {spec.label_values!r} ({len(spec.label_values)}), got {len(new_words)}"
                )
            if len(new_words) < 2:
                raise TangentError(
                    f"task '{spec.name}': a regression verbalizer needs at least 2 score words, "
                    f"got {new_words!r}"
                )
    return dataclasses.replace(spec, template=new_template, label_words=new_words, label_values=new_values)


__all__ = [
    "BUILTIN_TASKS",
    "get_builtin_spec",
    "spec_with_overrides",
    "validate_template",
    "validate_label_words",
]
