"""Model packages: the on-disk format, the converter's output, the default model cache."""
