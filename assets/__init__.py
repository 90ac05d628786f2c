"""Asset definitions, one module per layer."""

import warnings

import dagster as dg

# BackfillPolicy is how a range backfill becomes one run (the documented way); its beta notice is noise.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")
