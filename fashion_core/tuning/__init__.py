"""Optuna studies over search spaces; every trial a nested MLflow run, chosen on validation only.

A search space (``search_spaces/<name>.yaml``) names a base technique and the parameters to
search. ``run_tune`` opens the Optuna storage (sqlite, PostgreSQL or a journal file), creates
or resumes the study, and runs trials as child runs of one ``stage=tune`` parent run per
invocation. A trial trains on the train split, reports validation class-mean top-1 after every
epoch to the median pruner and returns its best validation value. The test split's rows are
dropped before a single image is gathered, so no trial can read it, let alone select on it.
A trial whose worker died is failed and queued again with the same parameters (heartbeats on
RDB storages, a process check on journal files). ``final_run`` trains the best configuration
as a normal pretrain/finetune run tagged ``selected=true``: the only time test is read.

One module per concern, each importing only those before it: ``spaces`` (search spaces and the
configs they yield), ``storage`` (Optuna storages), ``workers`` (dead workers), ``study`` (the
study and the objective), ``run`` (``run_tune``, ``final_run``). Every public name is importable
from ``fashion_core.tuning`` as before.

    fashion tune --space focal_weights --profile quick --n-trials 30 --final         --data /path/to/fashion-product-images-small.tar.gz
"""
