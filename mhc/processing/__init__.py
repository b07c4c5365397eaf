"""Turning raw inputs into network input: image files and arrays into batches, texts into token ids."""
