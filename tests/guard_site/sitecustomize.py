"""Loaded by Python in the subprocesses tests start (via PYTHONPATH): the same network guard."""

from tests import netguard

netguard.install()
