"""Layer-wise finetuning of slimmed models (DeepRebirth's training half).

Modules: ``config`` (typed schema), ``data`` (datasets), ``schedule`` (stages), ``optim``
(10x parameter groups), ``checkpoint`` (atomic, resumable), ``loop`` (steps, metrics),
``report`` (report.md + plot), ``distributed`` (torchrun), ``student`` (surgery hook),
``job`` (:func:`~deeprebirth.train.job.run_job`, the whole pipeline).
"""
