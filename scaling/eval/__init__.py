"""Zero-shot evaluation: classification with prompt ensembles and image<->text retrieval."""
