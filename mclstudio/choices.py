"""The names a user chooses from: learners, precisions and the streaming engine's modes.

Torch-free (it imports nothing), so that the command line can offer and check them without loading
the modules that implement them; those modules take their names from here (learners.registry's
LEARNERS holds exactly LEARNER_NAMES, tests/test_cli_startup.py checks it).
"""

from __future__ import annotations

LEARNER_NAMES = ("mamba", "transformer", "linear_transformer", "performer", "longhorn", "protonet")
PRECISIONS = ("fp32", "bf16", "fp16")  # mclstudio.precision: float32, or bf16/fp16 autocast
OBJECTIVES = ("anytime", "end")  # training.anytime: the meta-training objective
TRAIN_PRECISIONS = ("auto", *PRECISIONS)  # train and adapt: auto is bf16 on CUDA, fp32 on the CPU
EVAL_MODES = ("step", "task", "none")  # engine.stream.EngineConfig.eval_every
ROWS_MODES = ("task", "step")  # engine.stream.EngineConfig.rows_every
FUSED_MODES = ("auto", "off", "uncaptured")  # engine.stream.EngineConfig.fused_step
STUDIO_FUSED_MODES = FUSED_MODES[:2]  # open --fused-step ("uncaptured" is for the tests)
STUDIO_WORKERS = ("thread", "process")  # open --worker: where the models run (tui.process_player)
# open's default: on the 2-core CPU the process made 30.2 model steps/s with five learners against the thread's
# 19.4, and 77.5 against 57.5 with Mamba alone (benchmarks/results/tui_fps_cpu_worker_process.json).
STUDIO_DEFAULT_WORKER = "process"
