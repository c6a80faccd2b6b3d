"""cite-bench"""

__version__ = "0.1"
