"""The ML half of plumbline: features, training set, model, registry, evaluation, scoring, drift."""
