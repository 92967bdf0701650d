"""The `mclstudio` commands, one module each: train, eval, info, adapt, record, replay, open.

Each module defines one click command (``<name>_command``), which mclstudio.cli.main registers. At
import a command module loads only click, the shared options (mclstudio.cli.options) and torch-free
helpers; what the command runs (torch, the learners, training, recording, the studio) is imported
inside its function.
"""
