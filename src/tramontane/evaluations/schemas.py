"""Request bodies of `/v1/evaluations`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MetricType = Literal[
    "exact_match",
    "normalized_match",
    "regex",
    "json_schema",
    "bleu",
    "chrf",
    "embedding_similarity",
    "llm_judge",
]
MAX_TARGETS = 8


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Target(_Body):
    """What answers: a served model (base, `ft:` model or LoRA adapter) or an agent."""

    model: str | None = None
    agent_id: str | None = None
    agent_version: int | None = None

    @model_validator(mode="after")
    def _one(self) -> Target:
        if (self.model is None) == (self.agent_id is None):
            raise ValueError("a target names either a model or an agent_id")
        return self

    @property
    def label(self) -> str:
        if self.model is not None:
            return self.model
        return f"agent:{self.agent_id}" + (f"@{self.agent_version}" if self.agent_version is not None else "")


class Metric(_Body):
    type: MetricType
    # regex: the pattern an answer must contain (re.search).
    pattern: str | None = None
    # json_schema: the schema an answer must be a valid instance of.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    # embedding_similarity: the served embedding model; llm_judge: the judge model.
    model: str | None = None
    # llm_judge: what a good answer is; the judge scores 1 to 5 against it.
    rubric: str | None = None

    @property
    def name(self) -> str:
        return self.type

    @model_validator(mode="after")
    def _complete(self) -> Metric:
        needs = {"regex": "pattern", "json_schema": "json_schema", "embedding_similarity": "model",
                 "llm_judge": "model"}
        field = needs.get(self.type)
        if field is not None and getattr(self, field) is None:
            raise ValueError(f"metric {self.type} needs '{'schema' if field == 'json_schema' else field}'")
        if self.type == "llm_judge" and not self.rubric:
            raise ValueError("metric llm_judge needs a 'rubric'")
        return self


class CompletionArgs(_Body):
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=256, ge=1, le=8192)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None


class RedTeam(_Body):
    """Which attack families to run (all when left out), and a judge model that
    scores each attempt beside the deterministic detectors."""

    families: list[str] | None = None
    judge_model: str | None = None
    # The first attacks of each family only (all when left out).
    attempts_per_family: int | None = Field(default=None, ge=1, le=100)


class CreateEvaluation(_Body):
    name: str | None = Field(default=None, max_length=200)
    targets: list[Target] = Field(min_length=1, max_length=MAX_TARGETS)
    # An evaluation: a JSONL file of the workspace, and how to score its answers.
    dataset: str | None = None
    metrics: list[Metric] | None = None
    # Or a red-team run.
    red_team: RedTeam | None = None
    completion_args: CompletionArgs = Field(default_factory=CompletionArgs)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _kind(self) -> CreateEvaluation:
        if (self.dataset is None) == (self.red_team is None):
            raise ValueError("give either a dataset (an evaluation) or red_team (a red-team run)")
        if self.dataset is not None and not self.metrics:
            raise ValueError("an evaluation needs at least one metric")
        labels = [t.label for t in self.targets]
        if len(set(labels)) != len(labels):
            raise ValueError("targets must differ")
        return self

    @property
    def kind(self) -> str:
        return "evaluation" if self.dataset is not None else "red_team"
