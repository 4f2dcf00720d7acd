"""The MeZO step benchmark behind ``scripts/benchmark.py`` (its docstring lists the measurements a. to i.).

Modules: ``harness`` (interleaved timing rounds, medians, machine load), ``workload`` (configs, batches, the models
as they train, the trainer's loss), ``upstream`` (the step and the scoring as upstream MeZO wrote them), ``step``
(the ZO step cases: ours, upstream's, the trainer's, REF, merges), ``out_of_place`` (rows i.), ``memory`` (peak
memory, ZO optimizer state), ``scoring`` (batched against one-row evaluation), ``masked_lm`` (``--masked-lm``),
``int8`` (``--int8``), ``methods_memory`` (``--methods-memory``: the peak memory of each ZO method), ``ratios`` and
``report`` (the ratios, their targets and the table), ``suite`` (a whole run, its JSON and table).

Which parameters a step perturbs, their weight decay and the cache choice come from the engine
(``mezo_engine.zo_params``: the trainer's own choice), never from a copy here. Imported as ``bench`` (``scripts/``
is on the path of ``python scripts/benchmark.py`` and of the tests, through pytest.ini).
"""
