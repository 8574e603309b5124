"""EngineConfig: start-up settings of the engine (frozen; validated; one help text per knob)."""

from __future__ import annotations

from dataclasses import dataclass, field

# quietstar.dtypes.DTYPE_CHOICES, spelled out: the API process reads this config and must not
# import torch (tests/quietstar/test_dtypes.py keeps these and quietstar's equal).
DTYPE_CHOICES = ("auto", "bfloat16", "float32", "float16")
QUANT_MODES = ("int8", "int4", "q4_1")  # quietstar.quant's, spelled out for the same reason
INT4_GROUP_SIZES = (32, 64, 128, 256)
CUDA_GRAPHS = ("auto", "on", "off")
COMPILE = ("off", "on")


def parse_sizes(text: str) -> tuple[int, ...]:
    """`1,8,16` -> (1, 8, 16)."""
    return tuple(int(x) for x in text.split(",") if x.strip())


@dataclass(frozen=True)
class EngineConfig:
    model: str = field(
        default="default",
        metadata={"help": "`default` (embedded SmolLM2-135M-Instruct) or a checkpoint directory"},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": f"backbone dtype: {', '.join(DTYPE_CHOICES)}; auto = bf16 on CUDA and on CPUs "
            "with native bf16 matmuls, fp32 on CPUs that emulate bf16 (the choice and why are "
            "logged and shown in /v1/models)",
            "choices": DTYPE_CHOICES,
        },
    )
    heads: str | None = field(
        default=None,
        metadata={
            "help": "a Quiet-STaR heads directory (quietstar_config.json + quietstar.safetensors) "
            "whose start/end vectors and mixing head replace the model's own (default: the "
            "model's)"
        },
    )
    device: str = field(default="cpu", metadata={"help": "torch device: cpu, cuda, cuda:N"})
    quantize: str | None = field(
        default=None,
        metadata={
            "help": "quantisation of the backbone linears, done once at load: int8 (weight-only, "
            "per output channel), int4 (weight-only, grouped; refused on devices without a "
            "PyTorch int4 kernel) or q4_1 (llama.cpp's Q4_1 blocks, the default model's GGUF "
            "format, with activations rounded to 8 bits per 32 values as llama.cpp does; CPU "
            "only, the fastest measured there); the LM head is int8, the mixing head and meta "
            "vectors stay fp32 (default: none)",
            "choices": QUANT_MODES,
        },
    )
    quantize_group_size: int = field(
        default=32,
        metadata={"help": f"int4 only: input columns per scale/zero, one of {INT4_GROUP_SIZES}"},
    )
    max_model_len: int = field(
        default=2048,
        metadata={"help": "context limit in visible tokens (capped by the model's own)"},
    )
    max_num_seqs: int = field(
        default=16, metadata={"help": "sequences decoded at once (KV slots allocated up front)"}
    )
    max_thought_tokens: int = field(
        default=32, metadata={"help": "largest thought length a request may ask for"}
    )
    max_num_thoughts: int = field(
        default=8,
        metadata={
            "help": "largest number of parallel thoughts per position (num_thoughts, a "
            "request's `thoughts.count`) a request may ask for; sizes the thought KV cache"
        },
    )
    cuda_graphs: str = field(
        default="auto",
        metadata={
            "help": "capture the decode step as CUDA graphs (padded to a few batch sizes): "
            "auto (on for a CUDA device, off otherwise), on (CUDA only), off"
        },
    )
    compile: str = field(
        default="off",
        metadata={
            "help": "torch.compile the decode step's network (attention and pre-packed linears "
            "stay as they are; the elementwise work between them is fused) for the step sizes in "
            "--compile-sizes: on, off. Compiles at start-up (about 20-80 s per size for the "
            "default model on 2 cores; cached for later starts); on CPU it needs a C++ compiler, "
            "and where quietstar's CPU kernels run every layer (bf16, fp32, int8 or int4 weights) "
            "the eager step is faster",
            "choices": COMPILE,
        },
    )
    compile_sizes: tuple[int, ...] = field(
        default=(1,),
        metadata={
            "help": "with --compile on: comma-separated step sizes in rows (a step has one row "
            "per stream, one per thought while thinking, and both on a token's first thought "
            "step) to compile a static graph for, each at start-up; steps of other sizes run "
            "eagerly (default: 1)",
            "parse": parse_sizes,
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for requests that give none"})
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch CPU threads (default: torch's; under `quietstar serve` on CPU, every "
            "core for the engine-core process, all but one with --engine-core thread); on a "
            "machine shared with other busy processes, fewer threads avoid stalled OpenMP "
            "barriers"
        },
    )

    def __post_init__(self):
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")
        if self.quantize is not None and self.quantize not in QUANT_MODES:
            raise ValueError(f"quantize must be one of {QUANT_MODES}, got {self.quantize!r}")
        if self.quantize == "int4" and self.quantize_group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                f"int4 group size must be one of {INT4_GROUP_SIZES}, got {self.quantize_group_size}"
            )
        if self.quantize == "q4_1" and self.quantize_group_size != 32:
            raise ValueError(
                f"q4_1 blocks hold 32 values, got group size {self.quantize_group_size} "
                "(the group size is int4's)"
            )
        for name in ("max_model_len", "max_num_seqs", "max_num_thoughts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cuda_graphs not in CUDA_GRAPHS:
            raise ValueError(f"cuda_graphs must be one of {CUDA_GRAPHS}, got {self.cuda_graphs!r}")
        if self.cuda_graphs == "on" and not self.device.startswith("cuda"):
            raise ValueError(
                f"cuda_graphs 'on' needs a CUDA device, got device {self.device!r} "
                "(use 'auto' or 'off')"
            )
        if self.compile not in COMPILE:
            raise ValueError(f"compile must be one of {COMPILE}, got {self.compile!r}")
        object.__setattr__(self, "compile_sizes", tuple(self.compile_sizes))  # JSON gives a list
        if not self.compile_sizes or any(n < 1 for n in self.compile_sizes):
            raise ValueError(f"compile_sizes must be row counts >= 1, got {self.compile_sizes}")
        if self.max_thought_tokens < 0:
            raise ValueError(f"max_thought_tokens must be >= 0, got {self.max_thought_tokens}")

    @property
    def use_cuda_graphs(self) -> bool:
        return self.cuda_graphs == "on" or (
            self.cuda_graphs == "auto" and self.device.startswith("cuda")
        )

    @property
    def max_thought_len(self) -> int:
        """Thought KV positions per row: START + max_thought_tokens + END."""
        return self.max_thought_tokens + 2
