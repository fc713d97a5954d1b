"""Test-suite setup: make ``tests/`` importable so the test modules can share ``tests/utils.py``."""
import sys
from pathlib import Path

TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
