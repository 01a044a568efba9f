"""Scoring transcriptions: normalisation, WER with its breakdown, the eval callback,
and `ta eval`'s named test sets, model comparison and reports.

Kept free of heavy imports so that `ta --help` stays fast; the modules import torch themselves.
"""
