"""Meta-training and evaluation of learners: losses, checkpoints, the training loop, evaluation."""
