"""Names one module writes and another reads: asset check names, asset tags and the metadata keys
that assets, sensors and lineage share. The values are public (the UI, check selections, outside
tools and the tests use them): never change one. Imports nothing from plumbline."""

# ------------------------------------------------------------------ asset check names
ACCOUNTING = "accounting"  # raw: delivered = accepted + dead-lettered + superseded
CONFORMANCE = "schema_conformance"  # raw: the contract's type and required rules, folded into one check
SCHEMA_CHANGES = "schema_changes"  # raw: no partition built from a delivery quarantined by a schema change
SCHEMA_VERSION_DIFF = "schema_version_diff"  # raw: how the schema versions feeding a partition differ
CONTRACT_BY_PARTITION = "contract_by_partition"  # raw, partitioned: one verdict per partition (its partitions view)
RESTATEMENTS = "restatements"  # raw: partitions that now read differently, within the contract's limits
TRAINING_SET_SPLIT = "training_set_split"  # ml/training_set: disjoint train, validation and test windows
TRAINING_DATA_CURRENT = "training_data_current"  # ml/delay_model: WARN while retraining on restated data is deferred
PROMOTION_GATE = "promotion_gate"  # ml/model_evaluation: promotes the challenger (also the actor it records)
FEATURE_DRIFT = "feature_drift"  # ml/flight_predictions: the three drift checks
PREDICTION_DRIFT = "prediction_drift"
PERFORMANCE_DRIFT = "performance_drift"
DRIFT_BY_PARTITION = "drift_by_partition"  # ml/flight_predictions: the three drift checks, one verdict per partition

# ------------------------------------------------------------------ asset tags
SOURCE_TAG = "plumbline/source"  # bronze and raw: the contract (source) the asset holds
LAYER_TAG = "plumbline/layer"  # every asset: its layer, the same as its group

# ------------------------------------------------------------------ static asset metadata
REGISTERED_MODEL = "plumbline/registered_model"  # the asset's data is versions of that MLflow registered model
AGGREGATED_COLUMNS = "plumbline/aggregated_columns"  # columns computed by aggregates (lineage transformation subtype)
# {asset key: [columns]}: the keys input rows are looked up by; a column the join brings depends on them INDIRECT/JOIN
JOIN_KEYS = "plumbline/join_keys"

# ------------------------------------------------------------------ materialization metadata
# bronze
DELIVERIES = "deliveries"  # the files a run read: lineage inputs
PARTITIONS_TOUCHED = "partitions_touched"  # event dates of the rows a run loaded
# raw, per partition (the figures add up across partitions, save the bronze files)
DELIVERED = "delivered"
DEAD_LETTERED = "dead_lettered"
SUPERSEDED = "superseded"
BRONZE_FILES = "bronze_files"  # how many bronze files a partition was rebuilt from
BUILT_FROM = "built_from"  # the ids of those files
# ml: which registered model version a materialization wrote or read, and what the gate decided
MODEL_VERSION = "model_version"
CHALLENGER_VERSION = "challenger_version"
CHAMPION_VERSION = "champion_version"
MLFLOW_TRACKING_URI = "mlflow_tracking_uri"
DECISION = "decision"  # promotion gate result
PROMOTED = "promoted"  # the DECISION that made the challenger champion

# ------------------------------------------------------------------ asset check metadata
RULE = "rule"  # a contract rule's check: the rule in words
DEAD_LETTERED_ROWS = "dead_lettered_rows"  # a rule's check: rows it dead-lettered
DEAD_LETTERED_BY_RULE = "dead_lettered_by_rule"  # schema_conformance: rows dead-lettered per type/required rule
