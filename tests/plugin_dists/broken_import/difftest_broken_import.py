"""A difftest plugin that cannot be imported: it needs a library that is not there.

The message has two lines on purpose: difftest must still report it in one.
"""

raise ImportError("difftest-broken-import needs the module 'libtoymmu'\n(pip install libtoymmu)")
