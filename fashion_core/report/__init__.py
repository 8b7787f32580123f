"""The ``compare`` report: which technique works best, for which classes?

Pulls the pretrain/finetune runs through the MLflow tracking API (the same calls against the
default sqlite store and an ``http://`` tracking server), reads each run's ``eval/`` artifacts,
recomputes every per-class number from ``eval/predictions.csv`` (and counts any disagreement
with ``eval/per_class.csv``), and writes, per stage:

- a summary table: technique x class-mean Top-1/Top-5 (mean over seeds ± std, and a 95 %
  interval of that mean from a bootstrap over seeds and the stage's shared test images), the lowest and highest
  seed, micro accuracy, classes evaluated, seeds, classes won, the model's inputs
  (image / metadata / image+metadata), the leaky flag, configurations read on test and the
  test-informed mark; runs of one technique with different
  configurations (e.g. an epochs override) are separate rows, ``technique [key=value]``;
- paired comparisons: each technique against the stage's best (and ``--pair A,B``) on the same test
  images, with probability of improvement and per-class exact McNemar tests (Holm), summed up in words;
- the class-mean under the peers' protocols; each technique's most frequent confusions with example
  thumbnails from the image cache; a per-class view with Wilson intervals;
- a per-class table: class x technique Top-1/Top-5 with ``n_train`` and ``n_test``;
- an interactive HTML report (plotly.js embedded, opens offline): per-class heatmap,
  class-mean bars with error bars, accuracy against training examples (the few-shot curve),
  and the classes that were not evaluated and why;

as CSV and Markdown too, into a local folder and as the artifacts of a ``stage=compare`` run.

The package, one module per step, each importing only those before it: ``runs`` (which runs),
``marks`` (test-informed rows), ``stats`` (paired bootstrap, McNemar, Holm), ``analysis`` (paired
comparisons, protocols, confusions), ``tables`` (one run's evaluation and the report's tables),
``figures``, ``images`` (thumbnails), ``render`` (HTML, Markdown, CSV), ``compare`` (``run_compare``).
docs/report-statistics.md says how each figure is computed. Every public name is importable from
``fashion_core.report``.

    fashion compare --out reports/compare
"""
