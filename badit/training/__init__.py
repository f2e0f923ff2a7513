"""Trainer glue: ``transformers.Trainer`` with BADIT's callbacks, the PEFT config of each method, and
model loading. The experiment application (configs, runs, settings) is ``badit.experiments``."""
