import sys
from pathlib import Path

# The scripts in benchmarks/ are run as `python benchmarks/NAME.py`, which puts their folder on
# the path; their tests import them the same way. The installed package never does.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
