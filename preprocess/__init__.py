"""Decode raw video datasets once into frame + 16 kHz audio shards: ``python -m preprocess``."""
