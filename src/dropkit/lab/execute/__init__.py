"""Where batches execute: the third stage of the lab's pipeline, and the only writer of the store.

- :mod:`~dropkit.lab.execute.runner`: plans batches, skips runs the store holds, hands the rest to
  an engine and writes each finished batch in one transaction;
- :mod:`~dropkit.lab.execute.engines`: in this process (batched) or on a Ray cluster;
- :mod:`~dropkit.lab.execute.progress`: the progress sinks (tqdm, rich, or an object of the user's).
"""
