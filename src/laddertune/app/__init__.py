"""The application around the core library: command line, data, the training loop, inference,
reports, demo, benchmarks, model aliases, baselines and memory accounting.

It only calls the core (`laddertune.LSTModel`, `get_lst_model`, ...); the core knows nothing of
files, flags or reports.
"""
