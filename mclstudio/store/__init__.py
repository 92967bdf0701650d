"""The model store: what it takes to have a learner in hand, below training, the engine and recording.

Reading order: ``device`` (which torch device a name means, where a learner lives), ``checkpoint`` (one .pt
file: a learner's config, weights and metadata, read safely and written atomically), ``adapters`` (low-rank
adapter files applied on top of a checkpoint, and ``load_learners``, the one loader of eval, record and
open). It imports only from below it (learners, files, formatting), so loading a model
never imports training.
"""
