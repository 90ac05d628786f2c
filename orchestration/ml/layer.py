"""The ML layer as the rest of plumbline names it: asset keys, the tables the features read, the
daily partitions, and the configuration that shapes the graph. The assets (assets/ml.py), the
sensors that follow them and `plumbline sync` take these from here, so none of them needs the
assets module to know what the layer is called."""

from __future__ import annotations

import dagster as dg

from orchestration import catalog
from orchestration.ml import config

# Read when the code location loads, for what shapes the graph (the rolling window of the partition
# mapping); every run reads the configuration again, so a changed split or threshold applies at once.
CFG = config.load()
DAILY = catalog.partitions_def(catalog.contracts()["flights"])  # a feature day is a flights day

FEATURES = dg.AssetKey(["ml", "flight_features"])
TRAINING_SET = dg.AssetKey(["ml", "training_set"])
MODEL = dg.AssetKey(["ml", "delay_model"])
EVALUATION = dg.AssetKey(["ml", "model_evaluation"])
PREDICTIONS = dg.AssetKey(["ml", "flight_predictions"])

# What ml.flight_features reads: core.flights through the rolling window, the rest day by day or whole.
CORE_FLIGHTS = dg.AssetKey(["core", "flights"])
WEATHER = dg.AssetKey(["raw", "weather"])
PLANES = dg.AssetKey(["raw", "planes"])
AIRPORTS = dg.AssetKey(["raw", "airports"])
FEATURE_INPUTS = (CORE_FLIGHTS, WEATHER, PLANES, AIRPORTS)
