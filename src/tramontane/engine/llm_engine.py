"""The synchronous engine: admission, one scheduling step at a time, outputs.

`LLMEngine.step()` schedules a batch, runs the model, samples, and turns new tokens
into text, applying stop conditions. The async front end (`AsyncEngine`) drives it
from a single background thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from functools import partial

from .block_manager import BlockManager
from .checkpoint import Checkpoint, load_checkpoint
from .config import EngineConfig
from .errors import EngineError, EngineOverloadedError, InvalidRequestError
from .gpu.runner import GPUModelRunner, uses_gpu_path
from .model import CausalLM
from .multimodal import ImageInput, PromptImages
from .outputs import CompletionOutput, RequestOutput
from .prepared import load_prepared, prepared_path, save_prepared
from .runner import ModelRunner
from .sampler import sample
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import ANONYMOUS, Priority, SeqStatus, Sequence, Tenant
from .tokenizer import IncrementalDecoder

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_shed: int


@dataclass
class _Request:
    request_id: str
    prompt_token_ids: list[int]
    seqs: list[Sequence]
    arrival_time: float

    @property
    def priority(self) -> Priority:
        return self.seqs[0].priority

    @property
    def sheddable(self) -> bool:
        """Nothing of it has run that its caller saw: refusing it now costs them
        a retry, not a broken answer."""
        return all(s.status == SeqStatus.WAITING and not s.num_output_tokens for s in self.seqs)


class LLMEngine:
    def __init__(
        self,
        checkpoint: Checkpoint,
        config: EngineConfig | None = None,
        prepared: CausalLM | None = None,
        on_prepared: Callable[[CausalLM], None] | None = None,
    ):
        """`prepared`: the model already built (engine/prepared.py), for a
        checkpoint loaded without weights; see ModelRunner for `on_prepared`."""
        self.config = config = config or EngineConfig()
        self.name = checkpoint.name
        if checkpoint.config.vision is not None and uses_gpu_path(config):
            log.warning("%s: the GPU path has no vision encoder yet; the model serves text only", checkpoint.name)
            checkpoint = dataclasses.replace(checkpoint, config=dataclasses.replace(checkpoint.config, vision=None))
        self.model_config = checkpoint.config
        self.tokenizer = checkpoint.tokenizer
        if uses_gpu_path(config):
            self.runner: ModelRunner | GPUModelRunner = GPUModelRunner(checkpoint.config, checkpoint.tensors, config)
        else:
            self.runner = ModelRunner(checkpoint.config, checkpoint.tensors, config, prepared, on_prepared)
        self.loras = self.runner.loras
        self.asleep = False
        self._reset_cache_state()
        capacity = config.num_kv_blocks * config.block_size
        self.max_model_len = min(config.max_model_len or self.model_config.max_position_embeddings, capacity)
        self.eos_ids = sorted(set(self.model_config.eos_token_ids) | set(self.tokenizer.eos_token_ids))
        self.requests: dict[str, _Request] = {}
        self._arrivals = itertools.count()
        # Requests shed since the last `pop_shed`, with the error their callers get.
        self._shed: list[tuple[str, EngineOverloadedError]] = []
        self.num_shed = 0
        self._next_wait_check = 0.0

    def _reset_cache_state(self) -> None:
        config = self.config
        assert config.num_kv_blocks is not None
        self.blocks = BlockManager(config.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.blocks, self.loras)

    @classmethod
    def from_path(
        cls, path: str, config: EngineConfig | None = None, on_progress: Callable[[int, int], None] | None = None
    ) -> LLMEngine:
        """Loads a checkpoint. With `config.prepared_weights_dir`, the model is
        mapped from its prepared file when there is one, and saved there otherwise."""
        config = config or EngineConfig()
        if uses_gpu_path(config):
            # Prepared models are CPU-quantized; the GPU path reads the checkpoint
            # straight into device memory.
            return cls(load_checkpoint(path, on_progress=on_progress, device=config.device), config)
        if config.prepared_weights_dir is None or not os.path.exists(path):
            # (A missing path gets load_checkpoint's error.)
            return cls(load_checkpoint(path, on_progress=on_progress), config)
        where = prepared_path(config.prepared_weights_dir, path, config)
        loaded = load_prepared(where)
        if loaded is not None:
            checkpoint, prepared = loaded
            return cls(checkpoint, config, prepared)
        checkpoint = load_checkpoint(path, on_progress=on_progress)
        return cls(checkpoint, config, on_prepared=partial(save_prepared, where, checkpoint))

    # -- light sleep ---------------------------------------------------------------

    def sleep(self) -> None:
        """Light sleep: frees the KV cache (and so the prefix cache) and, on a GPU,
        moves the weights to pinned host memory. Only while no request is in flight."""
        if self.requests:
            raise EngineError(f"cannot sleep with {len(self.requests)} request(s) in flight")
        if self.asleep:
            return
        self.runner.free_kv_cache()
        self.runner.offload_weights()
        self._reset_cache_state()
        self.asleep = True

    def wake_up(self) -> None:
        if not self.asleep:
            return
        self.runner.restore_weights()
        self.runner.allocate_kv_cache()
        self.asleep = False

    # -- admission -----------------------------------------------------------------

    @property
    def accepts_images(self) -> bool:
        return self.model_config.vision is not None

    def prompt_images(self, prompt_token_ids: list[int], images: Seq[ImageInput]) -> PromptImages | None:
        """The prompt's images matched to its [IMG] tokens (None without images);
        InvalidRequestError for images sent to a text-only model or a layout that does not match."""
        if not images:
            return None
        if self.model_config.vision is None:
            raise InvalidRequestError(f"The model '{self.name}' does not accept images: it is a text-only model",
                                      param="messages")
        return PromptImages(prompt_token_ids, images, self.model_config.vision)

    def check_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: Priority = Priority.INTERACTIVE,
        images: Seq[ImageInput] = (),
    ) -> int:
        """Validate a request without changing any state; returns its max_tokens.
        Safe to call from another thread: it reads only sizes."""
        params.validate()
        self.prompt_images(prompt_token_ids, images)
        if self.asleep:
            raise EngineOverloadedError("the model is asleep; its replica is being woken")
        if params.lora is not None:
            self.loras.get(params.lora)  # unknown adapter: InvalidRequestError
        n_prompt = len(prompt_token_ids)
        if n_prompt == 0:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        if n_prompt >= self.max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {self.max_model_len} tokens, "
                f"but the prompt has {n_prompt} tokens.",
                param="messages",
            )
        room = self.max_model_len - n_prompt
        max_tokens = params.max_tokens if params.max_tokens is not None else min(room, self.config.default_max_tokens)
        if max_tokens > room:
            raise InvalidRequestError(
                f"max_tokens is too large: the prompt has {n_prompt} tokens and the model's "
                f"maximum context length is {self.max_model_len}, leaving room for {room}.",
                param="max_tokens",
            )
        waiting = list(self.scheduler.waiting)  # a copy: another thread may be changing it
        if len(waiting) + params.n > self.config.max_waiting_requests and not any(
            s.priority > priority for s in waiting
        ):
            raise _queue_full(len(waiting))
        return max_tokens

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        tenant: Tenant = ANONYMOUS,
        priority: Priority = Priority.INTERACTIVE,
        images: Seq[ImageInput] = (),
    ) -> None:
        """Queues a request. `tenant` and `priority` decide its share of the engine
        (scheduler.py). With the queue full, the newest request of a lower class than
        this one that has not started is shed for it; with none, this one is refused.
        `images`: the pixels of the images whose [IMG] tokens the prompt holds, in order."""
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        max_tokens = self.check_request(prompt_token_ids, params, priority)
        prompt_images = self.prompt_images(prompt_token_ids, images)
        while len(self.scheduler.waiting) + params.n > self.config.max_waiting_requests:
            victim = self._shed_candidate(priority)
            if victim is None:
                raise _queue_full(len(self.scheduler.waiting))
            self._shed_request(victim, "the engine is saturated and this request has a lower priority class", 1.0)
        lora = self.loras.get(params.lora) if params.lora is not None else None
        arrival = next(self._arrivals)
        seqs = [
            Sequence(request_id, i, prompt_token_ids, params, max_tokens,
                     IncrementalDecoder(self.tokenizer, prompt_token_ids), arrival, lora, tenant, priority,
                     prompt_images)
            for i in range(params.n)
        ]
        self.requests[request_id] = _Request(request_id, list(prompt_token_ids), seqs, time.monotonic())
        for seq in seqs:
            self.scheduler.add(seq)

    # -- load shedding ---------------------------------------------------------------

    def pop_shed(self) -> list[tuple[str, EngineOverloadedError]]:
        """The requests shed since the last call, each with the error for its caller."""
        shed, self._shed = self._shed, []
        return shed

    def _shed_candidate(self, priority: Priority) -> _Request | None:
        """The newest not yet started request of the lowest class below `priority`."""
        lower = [r for r in self.requests.values() if r.priority > priority and r.sheddable]
        return max(lower, key=lambda r: (r.priority, r.seqs[0].arrival)) if lower else None

    def _shed_request(self, req: _Request, why: str, retry_after_s: float) -> None:
        for seq in req.seqs:
            self.scheduler.remove(seq)
            seq.status = SeqStatus.FINISHED
            seq.finish_reason = "abort"
        del self.requests[req.request_id]
        self.num_shed += 1
        self._shed.append((req.request_id, EngineOverloadedError(f"{why}; retry later", retry_after_s)))

    def _shed_stale(self) -> None:
        """Sheds interactive requests that waited `max_queue_wait_s` without a token."""
        limit = self.config.max_queue_wait_s
        now = time.monotonic()
        if limit is None or now < self._next_wait_check:
            return
        self._next_wait_check = now + min(0.25, limit / 4)
        stale = [
            r for r in self.requests.values()
            if r.priority == Priority.INTERACTIVE and r.sheddable and now - r.arrival_time > limit
        ]
        for req in stale:
            # A longer pause than for a full queue: the engine is behind, not just busy.
            self._shed_request(req, f"the engine is saturated: no capacity for this request within {limit:g} s", 5.0)

    # -- LoRA adapters ----------------------------------------------------------------

    def add_lora(self, name: str, path: str) -> None:
        """Serve the PEFT LoRA adapter in `path` as `name` (SamplingParams(lora=name)).
        ModelLoadError if it does not fit this base model."""
        self.loras.add(self.loras.load(name, path))

    def remove_lora(self, name: str) -> None:
        """New requests can no longer name it; requests already running finish with it."""
        self.loras.remove(name)

    def abort(self, request_id: str) -> RequestOutput | None:
        req = self.requests.get(request_id)
        if req is None:
            return None
        for seq in req.seqs:
            if not seq.finished:
                self._finish(seq, "abort")
        return self._collect(req)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.blocks.usage(),
            num_kv_blocks=self.blocks.num_blocks,
            prefix_cache_queries=self.blocks.prefix_queries,
            prefix_cache_hits=self.blocks.prefix_hits,
            num_preemptions=self.scheduler.num_preemptions,
            num_shed=self.num_shed,
        )

    # -- the step ------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        self._shed_stale()
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        try:
            logits, rows = self.runner.execute(batch)
        except Exception as exc:  # a failed forward must not take the other requests down
            return self._fail_requests_of(batch.seqs, exc)
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += n
            self.blocks.register_full_blocks(seq)
        sampling_seqs = [batch.seqs[r] for r in rows]
        touched: dict[str, _Request] = {}
        if sampling_seqs:
            try:
                tokens, logprobs = sample(logits, sampling_seqs, self.eos_ids)
            except Exception as exc:  # e.g. non-finite logits: fail these requests, not the engine
                return self._fail_requests_of(sampling_seqs, exc)
            for seq, token, lp in zip(sampling_seqs, tokens, logprobs, strict=True):
                try:
                    self._append_token(seq, token, lp)
                except Exception as exc:  # e.g. a grammar rejecting a token
                    self._finish(seq, "error", stop_reason=str(exc))
                touched[seq.request_id] = self.requests[seq.request_id]
        return [self._collect(req) for req in touched.values()]

    def _append_token(self, seq: Sequence, token: int, logprob) -> None:
        p = seq.params
        seq.token_ids.append(token)
        seq.new_token_ids.append(token)
        if logprob is not None:
            seq.new_logprobs.append(logprob)
        if seq.constraint is not None:
            seq.constraint.accept(token)
        is_eos = token in self.eos_ids and not p.ignore_eos
        if not is_eos:
            seq.text += seq.decoder.step(token)
        if is_eos:
            self._finish(seq, "stop")
        elif token in p.stop_token_ids:
            self._finish(seq, "stop", stop_reason=token)
        elif self._match_stop_string(seq):
            pass
        elif seq.num_output_tokens >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            self._finish(seq, "length")
        elif seq.constraint is not None and seq.constraint.is_finished():
            self._finish(seq, "stop")

    def _match_stop_string(self, seq: Sequence) -> bool:
        stops = seq.params.stop
        if not stops:
            return False
        # Only text that could contain a stop string not seen at the previous token.
        window_start = max(0, seq.emitted_chars - max(len(s) for s in stops))
        best: tuple[int, str] | None = None
        for stop in stops:
            idx = seq.text.find(stop, window_start)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return False
        idx, stop = best
        seq.text = seq.text[: idx + (len(stop) if seq.params.include_stop_str_in_output else 0)]
        self._finish(seq, "stop", stop_reason=stop)
        return True

    def _finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None) -> None:
        if reason in ("length", "abort", "error"):
            seq.text += seq.decoder.flush()
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
        self.scheduler.remove(seq)
        seq.status = SeqStatus.FINISHED

    def _fail_requests_of(self, seqs: list[Sequence], exc: Exception) -> list[RequestOutput]:
        failed = {s.request_id: self.requests[s.request_id] for s in seqs}
        return [self._fail(req, exc) for req in failed.values()]

    def _fail(self, req: _Request, exc: Exception) -> RequestOutput:
        for seq in req.seqs:
            if not seq.finished:
                self._finish(seq, "error", stop_reason=f"{type(exc).__name__}: {exc}")
        out = self._collect(req)
        out.error = f"{type(exc).__name__}: {exc}"
        return out

    def _collect(self, req: _Request) -> RequestOutput:
        """Build the RequestOutput for everything new since the last one."""
        outputs = []
        for seq in req.seqs:
            hold = 0
            if not seq.finished and seq.params.stop:
                # Hold back a tail that may be the start of a stop string.
                hold = max(len(s) for s in seq.params.stop) - 1
            upto = max(seq.emitted_chars, len(seq.text) - hold)
            delta = seq.text[seq.emitted_chars : upto]
            seq.emitted_chars = upto
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=seq.text[:upto],
                    token_ids=seq.output_token_ids,
                    delta_text=delta,
                    delta_token_ids=seq.new_token_ids,
                    delta_logprobs=seq.new_logprobs,
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                )
            )
            seq.new_token_ids = []
            seq.new_logprobs = []
        finished = all(s.finished for s in req.seqs)
        if finished:
            del self.requests[req.request_id]
        return RequestOutput(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            num_cached_prompt_tokens=req.seqs[0].num_cached_tokens,
        )


def _queue_full(waiting: int) -> EngineOverloadedError:
    return EngineOverloadedError(f"the engine queue is full ({waiting} waiting); retry later")
