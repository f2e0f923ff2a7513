"""The experiment application, above the Trainer glue of ``badit.training``: run configs (config),
run folders (folder), the shared train-and-evaluate stage (stage), the settings multitask / single /
continual (settings), re-evaluation, comparison tables, run-level analysis and the demo.

See docs/architecture.md for how a config travels from the command line to results.
"""
