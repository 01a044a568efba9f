"""Packaging a trained model for others: a transformers-native export, its model card, the Hub push.

`hub_code/` holds the files copied verbatim into every export; tiny_audio never imports them.
"""
