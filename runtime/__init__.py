"""Torch-free runtime: signal front end, tokenizer, runners, sensors, health, server."""
