"""A Great Expectations expectation for a foreign key rule: a column's values are in the referenced values.

Great Expectations' own ExpectColumnValuesToBeInSet carries its value set in its configuration, and
re-serializes that configuration for every metric it plans (about 150 times per expectation): with
the thousands of values of a referenced table, that is most of a check's time. This expectation names
the referenced values instead (`referenced`, a key of REFERENCED, filled while a validation runs) and
judges them the same way, with pandas' isin.
"""

from __future__ import annotations

import functools

REFERENCED: dict[str, list] = {}  # name -> the values a foreign key may point at, while a validation runs


@functools.cache
def in_reference():
    """The expectation class, defined (and so registered with Great Expectations) on first use: the code
    location imports this module without loading Great Expectations."""
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics.map_metric_provider import ColumnMapMetricProvider, column_condition_partial

    class ColumnValuesInReference(ColumnMapMetricProvider):
        condition_metric_name = "column_values.in_reference"
        condition_value_keys = ("referenced",)

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, referenced, **kwargs):
            return column.isin(REFERENCED[referenced])

    class ExpectColumnValuesToBeInReference(ColumnMapExpectation):
        """Expect each column value to be one of the referenced values named `referenced`."""

        referenced: str
        map_metric = "column_values.in_reference"
        success_keys = ("referenced", "mostly")

    return ExpectColumnValuesToBeInReference
