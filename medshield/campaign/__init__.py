"""Audit campaigns: YAML config -> jobs on any executor -> JSON records -> report."""
