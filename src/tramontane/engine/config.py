"""Model architecture and engine settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class VisionConfig:
    """Hyperparameters of a Pixtral vision encoder and its projector (engine/vision.py)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    head_dim: int
    patch_size: int
    text_hidden_size: int
    rope_theta: float = 10000.0
    num_channels: int = 3
    hidden_act: str = "silu"
    norm_eps: float = 1e-5
    # Mistral Small 3.x: each s x s square of patches becomes one token, after an RMSNorm.
    spatial_merge_size: int = 1
    pre_projector_norm: bool = False
    projector_bias: bool = True
    projector_act: str = "gelu"
    # Which encoder output feeds the projector (HF's vision_feature_layer); -1 is the last.
    feature_layer: int = -1
    image_token_id: int = 10

    @property
    def layers_used(self) -> int:
        """Encoder layers whose output reaches the projector (the others never run)."""
        layer = self.feature_layer
        return layer if layer >= 0 else self.num_hidden_layers + 1 + layer


@dataclass
class ModelConfig:
    """Hyperparameters of a Llama/Mistral/Mixtral/Qwen3-family decoder, in HF terms."""

    architecture: str  # "llama" | "mistral" | "mixtral" | "qwen3" | "qwen3_moe" | "gemma3_text"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # HF rope_scaling dict, e.g. {"rope_type": "llama3", "factor": 8.0, ...} or linear.
    rope_scaling: dict | None = None
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    # Mixtral-style sparse MoE; 0 experts means a dense MLP.
    num_local_experts: int = 0
    num_experts_per_tok: int = 2
    # Mixtral renormalises the chosen experts' router probabilities; Qwen3-MoE says whether.
    norm_topk_prob: bool = True
    # Qwen3, Gemma 3: an RMSNorm over each head of Q and of K before the rotary embedding.
    qk_norm: bool = False
    # Gemma 3: which layers attend through the sliding window ("sliding_attention") and
    # which see the whole context ("full_attention"); None: sliding_window applies to all.
    layer_types: list[str] | None = None
    # Gemma 3: the sliding layers' rotary base (unscaled); rope_theta and rope_scaling are the full layers'.
    rope_local_theta: float | None = None
    # Gemma 3: queries scaled by query_pre_attn_scalar ** -0.5 instead of head_dim ** -0.5.
    attention_scale: float | None = None
    # Gemma 3: token embeddings multiplied by sqrt(hidden_size).
    embedding_scale: float = 1.0
    hidden_act: str = "silu"
    # Gemma 3: RMSNorms on the outputs of attention and of the MLP too.
    sandwich_norms: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    # Pixtral / Mistral Small 3.x: the vision encoder whose embeddings fill the [IMG] tokens.
    vision: VisionConfig | None = None

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 0

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` attends through the sliding window."""
        if self.sliding_window is None:
            return False
        return self.layer_types is None or self.layer_types[layer] == "sliding_attention"

    @property
    def mixes_windows(self) -> bool:
        """Some layers slide and some see the whole context (Gemma 3)."""
        return len({self.is_sliding(i) for i in range(self.num_hidden_layers)}) > 1


@dataclass
class EngineConfig:
    block_size: int = 16
    # KV cache size; None sizes it from kv_cache_memory_gb.
    num_kv_blocks: int | None = None
    kv_cache_memory_gb: float = 1.0
    max_num_seqs: int = 64  # sequences running at once
    max_num_batched_tokens: int = 512  # prefill chunk budget per step
    max_model_len: int | None = None  # defaults to the model's context length
    max_waiting_requests: int = 256  # admission limit before EngineOverloadedError
    # Output bound of a request that sets no max_tokens (and the context allows).
    default_max_tokens: int = 4096
    # An interactive request that waited this long without a first token is shed
    # (EngineOverloadedError, a 503 with Retry-After): its caller hears back, rather
    # than timing out. None (the engine's default, deterministic for offline use):
    # wait for as long as it takes; `tramontane up` sets 30 s.
    max_queue_wait_s: float | None = None
    enable_prefix_caching: bool = True
    # Quantization of the linear layers: "auto" | "none" | "bf16" | "int8" | "int4" | "fp8"
    # (fp8: GPU path only; int8: CPU only) (int8
    # rounds activations too: fastest on CPU from a few rows up, but least faithful).
    # "auto" picks the fastest faithful one on the device (int4 with a bf16 head on CPU).
    quantization: str = "auto"
    device: str = "cpu"
    # Multi-LoRA: adapters resident at once (others wait in host memory) and the
    # largest rank an adapter may have (slots are padded to it).
    max_loras: int = 8
    max_lora_rank: int = 16
    # Activation and KV-cache dtype: "auto" is float32 on CPU and bfloat16 on GPUs.
    dtype: str = "auto"
    # Which runner: "auto" runs our C kernels on CPUs and FlexAttention (engine/gpu/)
    # on CUDA devices; "flex" forces the GPU path on any device (tests).
    attention_backend: str = "auto"
    # GPU path: decode steps replayed from CUDA graphs, one per batch-size bucket; and,
    # off CUDA, whether flex attention is compiled (else its eager reference runs).
    cuda_graphs: bool = True
    compile_attention: bool = False
    # GPU path: GPUs (one process each, started by torchrun) that split every layer.
    tensor_parallel_size: int = 1
    # Where prepared (quantized, repacked) models are kept between starts; None
    # prepares them on every start (see engine/prepared.py).
    prepared_weights_dir: str | None = None
