"""How one batch of runs trains: the second stage of the lab's pipeline.

- :mod:`~dropkit.lab.train.dispatch`: picks a trainer for each run of a batch and says why;
- :mod:`~dropkit.lab.train.contract`: what every trainer shares: metrics, evaluation scores,
  Adam's settings, max-norm, early stopping, dropout windows, augmentation;
- :mod:`~dropkit.lab.train.stacked`: the hand-written stacked MLP trainer (the fastest, for the
  built-in MLP arms);
- :mod:`~dropkit.lab.train.vmapped`: any ``nn.Module``, vmapped over runs with counter-based
  masks (a run computes the same in a batch as alone);
- :mod:`~dropkit.lab.train.module_loop`: one run at a time, the generic loop;
- :mod:`~dropkit.lab.train.counter_masks`: masks as a pure function of (seed, step, layer,
  element);
- :mod:`~dropkit.lab.train.attention_twins` and :mod:`~dropkit.lab.train.recurrent_twins`:
  attention, Transformer, Hugging Face, LSTM/GRU/RNN and embedding modules rewritten as
  batchable twins of themselves (the same weights and outputs, counter-based dropout) for the
  vmapped trainer;
- :mod:`~dropkit.lab.train.threads`: one thread or torch's, chosen by timing the steps;
- :mod:`~dropkit.lab.train.predictive`: what a trained run predicts, measured (``TrainSpec.
  evaluate``): the deterministic network and Monte Carlo dropout's calibration, batched over
  runs and samples.

It imports the plan and dropkit's core; it never imports the store, the runner, the results,
rich or the CLI. Trainers return :class:`~dropkit.lab.plan.records.RunRecord` values; writing
them is the runner's job.
"""
