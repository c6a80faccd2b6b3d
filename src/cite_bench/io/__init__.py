"""Reading and writing: atomic writes, scverse containers, the input readers, the model store.

The catalog names these classes through ``cite_bench.datasets``; the library imports them from
here.
"""
