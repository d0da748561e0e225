"""Request bodies of the fine-tuning and batch APIs, in Mistral's shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")


class TrainingFile(BaseModel):
    file_id: str
    weight: float = Field(1.0, gt=0)


class Hyperparameters(BaseModel):
    """Mistral's completion training parameters. Unset ones get defaults at
    validation, once the dataset's size is known (steps from epochs)."""

    training_steps: int | None = Field(None, ge=1, le=100_000)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    epochs: float | None = Field(None, gt=0, le=1000)
    seq_len: int | None = Field(None, ge=16, le=32_768)
    weight_decay: float | None = Field(None, ge=0, le=1)
    warmup_fraction: float | None = Field(None, ge=0, le=1)


class JobResources(BaseModel):
    """What a job's run asks of the node it runs on. With the Ray executor, Ray
    places the run on a node that has them free (GPUs included); the local
    executor runs jobs one at a time on the gateway and ignores them. Unset
    fields take the operator's defaults (`tramontane up --job-cpus/--job-gpus`)."""

    cpu: float | None = Field(None, gt=0, le=1024)
    gpus: float | None = Field(None, ge=0, le=64)
    memory_mb: int | None = Field(None, ge=1, le=64 * 1024 * 1024)


class ClassifierTargetIn(BaseModel):
    """Mistral's classifier target: its labels as in the data; `single_class` picks
    one label per text (softmax), `multi_class` any number (a sigmoid each)."""

    name: str = Field(min_length=1, max_length=64)
    labels: list[str] = Field(min_length=1, max_length=256)
    weight: float = Field(1.0, gt=0)
    loss_function: Literal["single_class", "multi_class"] | None = None


class CreateJobRequest(BaseModel):
    model: str
    training_files: list[TrainingFile] = Field(min_length=1)
    validation_files: list[str] | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    # Mistral's limit; it becomes part of the model id.
    suffix: str | None = Field(None, max_length=18, pattern=r"^[A-Za-z0-9_-]+$")
    auto_start: bool = True
    job_type: Literal["completion", "classifier"] | None = None
    classifier_targets: list[ClassifierTargetIn] | None = Field(None, min_length=1, max_length=16)
    resources: JobResources | None = None


class CreateBatchRequest(BaseModel):
    input_files: list[str] = Field(min_length=1)
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"]
    model: str | None = None
    metadata: dict[str, Any] | None = None
