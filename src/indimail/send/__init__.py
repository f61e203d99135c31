"""Delivery engine: qmail-send and its helpers (spawners, qmail-clean, qscheduler)."""
