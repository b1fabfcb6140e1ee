"""The `tc-calendar` (also `tc_calendar`) administration CLI."""
