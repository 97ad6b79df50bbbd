"""What a run is: the first stage of the lab's pipeline.

``plan → train → execute → store → results``. This package decides what to train and never trains:

- :mod:`~dropkit.lab.plan.config`: frozen dataclasses of a run (data, model, training, rates,
  seed) and its stable key;
- :mod:`~dropkit.lab.plan.arms`: the one registry of regularizers (arms) and their strengths;
- :mod:`~dropkit.lab.plan.comparison`: the arms of a comparison parsed, checked and expanded
  into run configs;
- :mod:`~dropkit.lab.plan.data`, :mod:`~dropkit.lab.plan.user_data`: built-in and CSV data, and
  a user's arrays, tensors or Datasets (content-hashed);
- :mod:`~dropkit.lab.plan.splits`: validation rows, folds and the rows early stopping may use;
- :mod:`~dropkit.lab.plan.models`, :mod:`~dropkit.lab.plan.user_model`: the built-in
  MLP/CNN/LSTM and the one ``ModelSource`` of a user's model;
- :mod:`~dropkit.lab.plan.records`: what a finished run hands on (``RunRecord``).

It imports only dropkit's core and tools, never the trainers, the store or the results.
"""
