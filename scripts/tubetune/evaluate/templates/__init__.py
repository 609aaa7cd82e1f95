"""The evaluation report's Jinja2 templates (data files of this package).

A package of its own so that the templates count in the code version of the rules whose modules import
it (the evaluate rule, through :mod:`tubetune.evaluate.report`) and not of every rule that imports a
module of :mod:`tubetune.evaluate` (answer_test, judge, parity): see :mod:`tubetune.codehash`.
"""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent
