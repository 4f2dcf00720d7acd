"""The engine shared by the apps (``large_models``: causal LMs on MeZO's large-model tasks; ``medium_models``:
masked LMs on the LM-BFF k-shot tasks): the zo step and optimizers, adapters and boosting, the Trainer subclass
and its callbacks, candidate scoring, metrics, checkpoints and result files."""
