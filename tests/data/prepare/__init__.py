"""Tests of the dataset preparation (data.prepare)."""
