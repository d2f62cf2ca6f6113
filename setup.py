"""Build hook for the one optional compiled kernel (everything else is in pyproject.toml).

``thresher.scorers.classifiers._ftnative`` speeds up the native fastText engine's character n-gram
hashing. It is optional: without a C compiler the build skips it and
``thresher.scorers.classifiers.fasttext_native`` uses its numpy implementation, which gives the
same results.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("thresher.scorers.classifiers._ftnative", ["scorers/classifiers/_ftnative.c"], optional=True,
                  extra_compile_args=["-O3"]),
    ],
)
