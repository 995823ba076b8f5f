"""Tests of the documentation site in a real browser (headless Chromium)."""
