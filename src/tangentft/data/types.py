"""The data nouns every layer shares: an example, a task's spec (template + label words), a loaded task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..io import fingerprint

TaskKind = Literal["classification", "regression"]


@dataclass(frozen=True)
class Example:
    """One labelled example. ``text_pair`` is set for sentence-pair tasks (STS-B)."""

    text: str
    label: int | float
    text_pair: str | None = None
    uid: str = ""  # "<file name>:<line number>", stable across runs; used in kernel sample ids


@dataclass
class TaskSpec:
    """How a task is posed to a model.

    ``template`` formats a causal-LM prompt with ``{sentence}`` (single-sentence tasks) or
    ``{sentence1}``/``{sentence2}`` (pair tasks). ``label_words`` are the verbalizers: for classification
    one word per class index, f(x)_k = logit of the first token of word k; for regression the score words
    whose softmax-weighted ``label_values`` give the causal LM's scalar prediction.
    """

    name: str
    kind: TaskKind
    template: str
    label_words: list[str]
    label_values: list[float] = field(default_factory=list)
    num_classes: int = 2  # classification only

    @property
    def is_pair(self) -> bool:
        return "{sentence2}" in self.template

    @property
    def num_outputs(self) -> int:
        """K, the number of task outputs f(x) ∈ R^K."""
        return self.num_classes if self.kind == "classification" else 1

    def format(self, ex: Example) -> str:
        """Fill the template with one example's text(s)."""
        if self.is_pair:
            return self.template.format(sentence1=ex.text, sentence2=ex.text_pair or "")
        return self.template.format(sentence=ex.text)


@dataclass
class TaskData:
    """A loaded task: its spec and named splits (``train``, ``test``, optionally ``dev``)."""

    spec: TaskSpec
    splits: dict[str, list[Example]]
    source: str

    def split(self, name: str) -> list[Example]:
        from ..errors import TangentError

        if name not in self.splits:
            raise TangentError(f"{self.source}: no split '{name}' (have: {', '.join(sorted(self.splits))})")
        return self.splits[name]


def data_fingerprint(examples: list[Example]) -> str:
    """Fingerprint of an ordered list of examples (texts + labels), for kernel provenance."""
    return fingerprint([[e.text, e.text_pair, e.label] for e in examples])


__all__ = ["Example", "TaskSpec", "TaskData", "TaskKind", "data_fingerprint"]
